"""Weight reading with quantisation awareness: side tensors are never weights.

Layouts name weights by exact templates ending in ``.weight``; :class:`WeightReader` turns such
a name into a float32 matrix, whatever way the checkpoint stores it:

* plain floating point (F64/F32/F16/BF16): upcast to float32;
* FP8 (``F8_E4M3``/``F8_E5M2``) with its scale tensor, dequantised as ``w * s``:
  ``<module>.weight_scale_inv`` (DeepSeek-V3 / transformers fine-grained FP8, one scale per
  ``weight_block_size`` block, 128 x 128 by default, partial blocks at the edges) or
  ``<module>.weight_scale`` (compressed-tensors float-quantized / FBGEMM: one scale per tensor,
  per output row ``[out]``/``[out, 1]``, or per block). ``uint8`` scales are E8M0 exponents
  ``2**(s - 127)``;
* GPTQ, AWQ (GEMM, GEMV), bitsandbytes (NF4/FP4 with their quant states, LLM.int8) and
  compressed-tensors (pack-quantized, int-quantized): dequantised by
  :mod:`awm_jax.layouts._quantformats` (kernels in :mod:`awm_jax.layouts._dequant`) as each
  format's published code does;
* any other integer storage, and the variants of those formats that are not dequantised
  (3-bit GPTQ, AWQ GEMV-fast/Marlin...): refused with a one-line message naming the format found.

The quantisation side tensors (``weight_scale``, ``weight_scale_inv``, ``qweight``,
``qzeros``, ``scales``, ``g_idx``, ``weight.absmax``, ``weight.quant_map``, ``SCB``...) are only
ever read as the scales of their own weight, never in place of one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from awm_jax.io.checkpoint import Checkpoint, check_readable
from awm_jax.errors import LayoutError, NumericalError
from awm_jax.layouts import _quantformats

__all__ = ["WeightReader", "QUANT_SIDE_SUFFIXES", "to_float32", "quantisation_method"]

#: Name endings of quantisation side tensors (never weights), for diagnostics and tests.
QUANT_SIDE_SUFFIXES = (
    ".weight_scale", ".weight_scale_inv", ".input_scale", ".qweight", ".qzeros", ".scales", ".g_idx",
    ".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map",
    ".weight.quant_state.bitsandbytes__nf4", ".weight.quant_state.bitsandbytes__fp4", ".SCB",
    ".weight_format", ".weight_packed", ".weight_shape", ".weight_zero_point",
)

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
#: Default FP8 block (DeepSeek-V3, Qwen3-FP8) when the config gives no ``weight_block_size``.
DEFAULT_FP8_BLOCK = (128, 128)
#: Largest block side accepted from a config (a block larger than any weight is harmless).
_MAX_BLOCK = 2**31 - 1


def _quantization_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``quantization_config`` of a config (or of its text config), else ``{}``."""
    for scope in (config, config.get("text_config") or {}):
        q = scope.get("quantization_config") if isinstance(scope, Mapping) else None
        if isinstance(q, Mapping):
            return q
    return {}


def _block_size(block: Any, ckpt: Checkpoint) -> tuple[int, int] | None:
    """``quantization_config.weight_block_size`` as ``(rows, columns)``, ``None`` when absent.

    Raises:
      LayoutError: present but not two integers in ``[1, 2**31 - 1]`` (``["x", 1]``, ``[1e309, 1]``
        and ``[0, 32]`` would otherwise crash or divide by zero when an FP8 weight is dequantised).
    """
    if block is None:
        return None
    if isinstance(block, (list, tuple)) and len(block) == 2 and all(
        isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= _MAX_BLOCK for b in block
    ):
        return int(block[0]), int(block[1])
    shown = repr(block)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise LayoutError(
        f"{ckpt.root}/config.json: quantization_config.weight_block_size is {shown}, expected two positive integers "
        "(block rows, block columns, e.g. [128, 128]); fix config.json"
    )


def quantisation_method(config: Mapping[str, Any]) -> str | None:
    """The ``quantization_config.quant_method`` of a config (or its text config), if any."""
    method = _quantization_config(config).get("quant_method")
    return method if isinstance(method, str) else None


def to_float32(array: np.ndarray, where: str) -> np.ndarray:
    """Upcasts a floating weight to float32, refusing integer (quantised) data and NaN/Inf.

    Args:
      array: the stored tensor.
      where: ``"<folder>: <tensor>"`` for messages.

    Returns:
      A float32 copy of ``array``.
    """
    if array.dtype.kind not in "fV" and "float" not in array.dtype.name:
        raise LayoutError(
            f"{where}: stored as {array.dtype}, i.e. quantised; dequantise the checkpoint "
            "(or use its float release) before comparing"
        )
    out = np.asarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise NumericalError(f"{where}: {bad} NaN/Inf value(s); the weights are damaged: fetch them again")
    return out


def _stem(name: str) -> str:
    if not name.endswith(".weight"):
        raise ValueError(f"weight templates must end in '.weight', got {name!r}")
    return name[: -len(".weight")]


class WeightReader:
    """Reads named weights of a checkpoint as float32, dequantising or refusing quantised ones.

    Args:
      ckpt: the checkpoint.
    """

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self._memo: dict[str, np.ndarray] | None = None
        self._plans: dict[str, _quantformats.QuantisedWeight | None] = {}
        self.method = quantisation_method(ckpt.config)
        self.fp8_block = _block_size(_quantization_config(ckpt.config).get("weight_block_size"), ckpt)

    def scoped(self) -> WeightReader:
        """A reader sharing this one's checkpoint that reads each weight once (one layer's Q and K
        from the same fused tensor); drop it when the layer is done."""
        other = copy.copy(self)
        other._memo = {}
        return other

    def _where(self, name: str) -> str:
        return f"{self.ckpt.root}: {name}"

    def has_weight(self, name: str) -> bool:
        """Whether weight ``name`` exists, stored plainly or in a quantised form."""
        if name in self.ckpt:
            return True
        if name.endswith(".weight"):
            stem = _stem(name)
            return f"{stem}.qweight" in self.ckpt or f"{stem}.weight_packed" in self.ckpt
        return False

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of weight ``name``, after checking it can be read (no tensor data is read).

        Raises:
          LayoutError: the weight is missing, or stored in a quantised format that is refused, or
            its FP8 scales are missing or do not fit it.
        """
        stem = _stem(name)
        quantised = self._integer_plan(name)
        if quantised is not None:
            return quantised.shape
        if name not in self.ckpt:
            self._refuse_missing(name, stem)
        info = self.ckpt.info(name)
        check_readable(info)
        if info.dtype in _FP8_DTYPES:
            self._fp8_plan(name, stem, info.shape)
        elif info.dtype not in _FLOAT_DTYPES:
            self._refuse_integer(name, stem, info.dtype)
        return info.shape

    def _integer_plan(self, name: str) -> _quantformats.QuantisedWeight | None:
        """The integer-quantised storage of ``name`` (planned once per reader), ``None`` for float/FP8 storage."""
        if name not in self._plans:
            self._plans[name] = _quantformats.plan(self.ckpt, name, _quantization_config(self.ckpt.config))
        return self._plans[name]

    def quantisation(self, name: str) -> str | None:
        """The integer-quantisation format weight ``name`` is stored in (``"GPTQ"``...), ``None`` if none."""
        planned = self._integer_plan(name)
        return planned.format if planned is not None else None

    def matrix(self, name: str) -> np.ndarray:
        """Reads a 2-D weight as float32, dequantising FP8.

        Args:
          name: exact tensor name ending in ``.weight``.

        Returns:
          float32 array of the stored shape (``[out, in]`` for ``Linear`` weights).

        Raises:
          LayoutError: as :meth:`shape`.
        """
        if self._memo is not None and name in self._memo:
            return self._memo[name]
        out = self._matrix(name)
        if self._memo is not None:
            self._memo[name] = out
        return out

    def _matrix(self, name: str) -> np.ndarray:
        stem = _stem(name)
        shape = self.shape(name)
        quantised = self._integer_plan(name)
        if quantised is not None:
            return to_float32(_quantformats.read(self.ckpt, quantised), self._where(name))
        if self.ckpt.info(name).dtype in _FLOAT_DTYPES:
            return to_float32(self.ckpt.read(name), self._where(name))
        scale_name, block = self._fp8_plan(name, stem, shape)
        w = np.asarray(self.ckpt.read(name), dtype=np.float32)
        raw = self.ckpt.read(scale_name)
        if raw.dtype == np.uint8:  # E8M0 exponents (MXFP8)
            scale = np.exp2(raw.astype(np.float32) - 127.0)
        else:
            scale = to_float32(raw, self._where(scale_name))
        rows, cols = shape
        if block is None:
            out = w * scale.reshape(rows if scale.size == rows and scale.size > 1 else 1, 1)
        else:
            bm, bn = block
            out = w * np.repeat(np.repeat(scale.reshape(-(-rows // bm), -(-cols // bn)), bm, axis=0)[:rows],
                                bn, axis=1)[:, :cols]
        # rounded to the scale's dtype (bfloat16 scales: compressed-tensors' float-quantized), as the format's
        # own decompression returns it; float32 scales (DeepSeek's weight_scale_inv) leave it as is
        out = _quantformats.as_dtype(out, raw.dtype.name)
        return to_float32(out, self._where(name))

    def vector(self, name: str) -> np.ndarray:
        """Reads a 1-D float tensor (a normalisation gain) as float32."""
        if name not in self.ckpt:
            raise self._missing(name)
        out = to_float32(self.ckpt.read(name), self._where(name))
        if out.ndim != 1:
            raise LayoutError(f"{self._where(name)}: has shape {out.shape}, expected a vector")
        return out

    # -- FP8 --------------------------------------------------------------------------------------

    def _fp8_plan(self, name: str, stem: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, int] | None]:
        """The scale tensor of an FP8 weight and its block size (``None``: per tensor or per row)."""
        for scale_name in (f"{stem}.weight_scale_inv", f"{stem}.weight_scale"):
            if scale_name in self.ckpt:
                break
        else:
            raise LayoutError(
                f"{self._where(name)}: stored as FP8 ({self.ckpt.info(name).dtype}) but {stem}.weight_scale_inv / "
                f"{stem}.weight_scale is missing, so it cannot be dequantised; fetch the complete checkpoint"
            )
        if len(shape) != 2:
            raise LayoutError(f"{self._where(name)}: FP8 weight of shape {shape}; only 2-D FP8 weights are dequantised")
        rows, cols = shape
        s_shape = tuple(self.ckpt.info(scale_name).shape)
        size = math.prod(s_shape)
        if size == 1 or s_shape in ((rows,), (rows, 1)):
            return scale_name, None
        if len(s_shape) == 2:
            sr, sc = s_shape
            if self.fp8_block is not None:
                bm, bn = self.fp8_block
            elif rows % sr == 0 and cols % sc == 0:
                bm, bn = rows // sr, cols // sc
            else:
                bm, bn = DEFAULT_FP8_BLOCK
            if (math.ceil(rows / bm), math.ceil(cols / bn)) == (sr, sc):
                return scale_name, (bm, bn)
            raise LayoutError(
                f"{self._where(scale_name)}: {sr} x {sc} block scales do not tile FP8 weight {name} of shape "
                f"{rows} x {cols} with blocks of {bm} x {bn}; set quantization_config.weight_block_size in config.json"
            )
        raise LayoutError(
            f"{self._where(scale_name)}: scale of shape {s_shape} does not fit FP8 weight {name} of shape "
            f"{shape}; the checkpoint is inconsistent"
        )

    # -- refusals ---------------------------------------------------------------------------------

    def _refuse_missing(self, name: str, stem: str) -> None:
        raise self._missing(name)

    def _missing(self, name: str) -> LayoutError:
        return LayoutError(
            f"{self.ckpt.root}: tensor {name} is missing; the checkpoint is incomplete or of another layout"
        )

    def _refuse_integer(self, name: str, stem: str, dtype: str) -> None:
        if any(f"{name}.{s}" in self.ckpt for s in ("absmax", "quant_map")):
            fmt = "bitsandbytes 4-bit without a quant_state.bitsandbytes__nf4/fp4 tensor"
        elif f"{stem}.weight_scale" in self.ckpt:
            fmt = f"{dtype} with {stem}.weight_scale but no compressed-tensors quantization_config (FBGEMM integer?)"
        else:
            fmt = f"{dtype} integers" + (f" ({self.method})" if self.method else "")
        raise LayoutError(
            f"{self._where(name)}: quantised as {fmt}, which awm_jax does not dequantise; compare the float "
            "(bf16/fp16/fp32) release of this model instead"
        )
