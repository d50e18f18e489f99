"""Integer-quantised weights dequantised to float32, as each format's published code does (array kernels).

Every function here takes the stored arrays of one weight and returns the float32 matrix in the
``Linear`` layout ``[out_features, in_features]``. The formats, and what each function follows:

* **GPTQ** (AutoGPTQ / GPTQModel ``qlinear`` dequantisation): ``qweight`` int32
  ``[in * bits / 32, out]`` holds ``32 / bits`` input rows per word, row ``32/bits * r + j`` in
  bits ``[bits j, bits (j + 1))``; ``qzeros`` int32 ``[groups, out * bits / 32]`` packs output
  columns the same way; ``scales`` ``[groups, out]``; ``g_idx`` int32 ``[in]`` gives each input
  row its group (act-order), ``row // group_size`` without it. ``W[o, i] = s[g, o] (q[i, o] - z[g, o])``
  where ``z`` is the stored zero plus one for the original ``checkpoint_format = "gptq"`` (the
  packer stores ``zero - 1``) and the stored zero for ``"gptq_v2"``. 2-, 4- and 8-bit.
* **AWQ GEMM** (AutoAWQ ``WQLinear_GEMM``, ``dequantize_gemm``): ``qweight`` int32
  ``[in, out / 8]``; each word holds 8 output columns in the order ``[0, 2, 4, 6, 1, 3, 5, 7]``
  (slot ``i`` holds column ``8 c + order[i]``); ``qzeros`` ``[in / group, out / 8]`` likewise;
  ``scales`` ``[in / group, out]``; ``W[o, i] = s[g, o] (q[i, o] - z[g, o])``, 4-bit.
* **AWQ GEMV** (AutoAWQ ``WQLinear_GEMV.from_linear``): ``qweight`` int32 ``[out, in / 8]``
  holding 8 input columns per word in order; ``qzeros`` ``[out, width]`` and ``scales``
  ``[out, 8 width]`` per input group, padded to ``width`` words; same formula, 4-bit.
* **bitsandbytes 4-bit** (``dequantize_4bit``): ``weight`` uint8, two codes per byte (first
  element in the high nibble) over the row-major flattened ``[out, in]``; value
  ``code[q] * absmax[k // blocksize]``; with double quantisation (``nested_absmax``) the
  ``absmax`` are uint8 codes: ``nested_quant_map[a] * nested_absmax[k // nested_blocksize] +
  nested_offset``. ``code`` is the NF4 or FP4 table of the ``quant_state`` JSON's ``quant_type``.
* **bitsandbytes 8-bit** (LLM.int8 ``SCB``): ``W = int8 * SCB[o] / 127``.
* **compressed-tensors pack-quantized** (``pack_to_int32``/``unpack_from_int32``):
  ``weight_packed`` int32 ``[out, ceil(in * bits / 32)]``, ``32 / bits`` input columns per word
  in order, stored as ``q + 2**(bits-1)``; ``weight_shape`` the true shape; asymmetric zero
  points ``weight_zero_point`` packed the same way along the output axis; ``weight_scale``
  ``[out, groups]`` (group), ``[out, 1]`` (channel) or one value (tensor); ``weight_g_idx``
  for act-order; ``W = (q - zp) * scale``.
* **compressed-tensors int-quantized / naive-quantized**: ``weight`` int8 with ``weight_scale``
  (and ``weight_zero_point``), the same formula without packing.

Which format a checkpoint's weight is stored in, and the checks of its side tensors, are in
:mod:`awm_jax.layouts._quantformats`. The packers in ``tests/io/test_quantized.py`` are written
from these descriptions, apart from this module, and round-trip through it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "AWQ_ORDER",
    "BNB_FP4",
    "BNB_NF4",
    "awq_gemm",
    "awq_gemv",
    "bnb_4bit",
    "bnb_int8",
    "ct_unpack",
    "gptq",
    "unpack_words",
]

#: AWQ GEMM packing order: slot ``i`` of a word holds output column ``8 c + AWQ_ORDER[i]``.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)

#: bitsandbytes' NF4 code table (``dDequantizeNF4``), indexed by the 4-bit code.
BNB_NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)

#: bitsandbytes' FP4 (E2M1 variant) table (``dDequantizeFP4Tree``): bit 3 the sign, bits 0-2 the magnitude.
_FP4_MAGNITUDES = np.array([0.0, 0.005208333333, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25], dtype=np.float32)
BNB_FP4 = np.concatenate([_FP4_MAGNITUDES, -_FP4_MAGNITUDES]).astype(np.float32)


def unpack_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Unpacks ``32 / bits`` unsigned fields per int32 word along ``axis``, field ``j`` in bits ``[bits j, bits (j+1))``.

    Args:
      words: int32 (or uint32) array.
      bits: field width (1, 2, 4 or 8).
      axis: the axis that grows by ``32 / bits`` (0 or 1 for matrices).

    Returns:
      int32 array with ``words.shape[axis] * 32 / bits`` along ``axis``; element ``per * r + j``
      is field ``j`` of word ``r``.
    """
    per = 32 // bits
    u = np.ascontiguousarray(words).view(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    mask = np.uint32((1 << bits) - 1)
    if axis == 0:
        fields = (u[:, None, ...] >> shifts.reshape((1, per) + (1,) * (u.ndim - 1))) & mask
        return fields.reshape((u.shape[0] * per,) + u.shape[1:]).astype(np.int32)
    fields = (u[..., None] >> shifts) & mask
    return fields.reshape(u.shape[:-1] + (u.shape[-1] * per,)).astype(np.int32)


def gptq(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray, bits: int,
         zero_plus_one: bool) -> np.ndarray:
    """GPTQ dequantisation.

    Args:
      qweight: int32 ``[in * bits / 32, out]``.
      qzeros: int32 ``[groups, out * bits / 32]``.
      scales: ``[groups, out]``.
      g_idx: int ``[in]``, each input row's group.
      bits: 2, 4 or 8.
      zero_plus_one: the stored zeros are ``zero - 1`` (``checkpoint_format = "gptq"``).

    Returns:
      float32 ``[out, in]``.
    """
    q = unpack_words(qweight, bits, axis=0)  # [in, out]
    z = unpack_words(qzeros, bits, axis=1)  # [groups, out]
    if zero_plus_one:
        z = z + 1
    s = scales.astype(np.float32)
    w = (q - z[g_idx]).astype(np.float32) * s[g_idx]
    return np.ascontiguousarray(w.T)


def awq_gemm(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """AWQ GEMM dequantisation (4-bit).

    Args:
      qweight: int32 ``[in, out / 8]``.
      qzeros: int32 ``[in / group_size, out / 8]``.
      scales: ``[in / group_size, out]``.
      group_size: input rows per group.

    Returns:
      float32 ``[out, in]``.
    """
    inverse = np.argsort(AWQ_ORDER)  # column k of a word sits in slot inverse[k]

    def columns(words: np.ndarray) -> np.ndarray:
        fields = unpack_words(words, 4, axis=1).reshape(words.shape[0], -1, 8)
        return fields[:, :, inverse].reshape(words.shape[0], -1)

    q, z = columns(qweight), columns(qzeros)
    groups = np.arange(q.shape[0]) // group_size
    w = (q - z[groups]).astype(np.float32) * scales.astype(np.float32)[groups]
    return np.ascontiguousarray(w.T)


def awq_gemv(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """AWQ GEMV dequantisation (4-bit).

    Args:
      qweight: int32 ``[out, in / 8]``.
      qzeros: int32 ``[out, width]`` (``width`` words of 8 groups, padded).
      scales: ``[out, 8 width]`` (padded).
      group_size: input columns per group.

    Returns:
      float32 ``[out, in]``.
    """
    q = unpack_words(qweight, 4, axis=1)  # [out, in]
    groups = np.arange(q.shape[1]) // group_size
    z = unpack_words(qzeros, 4, axis=1)[:, groups]
    return ((q - z).astype(np.float32) * scales.astype(np.float32)[:, groups]).astype(np.float32)


def bnb_4bit(packed: np.ndarray, absmax: np.ndarray, shape: tuple[int, int], blocksize: int, code: np.ndarray,
             nested: tuple[np.ndarray, np.ndarray, int, float] | None = None) -> np.ndarray:
    """bitsandbytes 4-bit (NF4/FP4) dequantisation.

    Args:
      packed: uint8, ``ceil(out * in / 2)`` bytes (any shape), high nibble first.
      absmax: one scale per block of ``blocksize`` elements: float, or uint8 codes when ``nested``.
      shape: ``(out, in)``.
      blocksize: elements per block.
      code: the 16-entry table (:data:`BNB_NF4` or :data:`BNB_FP4`).
      nested: ``(nested_absmax, nested_quant_map, nested_blocksize, nested_offset)`` for double quantisation.

    Returns:
      float32 ``[out, in]``.
    """
    n = shape[0] * shape[1]
    raw = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    codes = np.stack([raw >> 4, raw & 0x0F], axis=1).reshape(-1)[:n]
    if nested is not None:
        nested_absmax, nested_map, nested_blocksize, offset = nested
        idx = np.arange(absmax.size) // nested_blocksize
        scale = nested_map.astype(np.float32)[absmax.reshape(-1)] * nested_absmax.astype(np.float32).reshape(-1)[idx]
        scale = scale + np.float32(offset)
    else:
        scale = absmax.astype(np.float32).reshape(-1)
    values = code[codes] * scale[np.arange(n) // blocksize]
    return values.reshape(shape).astype(np.float32)


def bnb_int8(weight: np.ndarray, scb: np.ndarray) -> np.ndarray:
    """bitsandbytes LLM.int8 dequantisation: ``int8 [out, in] * SCB[out] / 127``."""
    return (weight.astype(np.float32) * (scb.astype(np.float32).reshape(-1, 1) / np.float32(127.0))).astype(np.float32)


def ct_unpack(packed: np.ndarray, bits: int, length: int, axis: int) -> np.ndarray:
    """compressed-tensors ``unpack_from_int32``: fields in order along ``axis``, cut to ``length``,
    shifted back to signed by ``2**(bits-1)``; int32."""
    q = unpack_words(packed, bits, axis=axis)
    q = q[:length] if axis == 0 else q[:, :length]
    return q - (1 << (bits - 1))
