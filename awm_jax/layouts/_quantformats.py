"""Which integer-quantisation format a weight is stored in, checked from the headers, and its reading.

:func:`plan` looks at the tensor names, dtypes and shapes around one weight (and at
``quantization_config``) and returns a :class:`QuantisedWeight` naming the format and the side
tensors, or refuses a damaged or unknown variant with one line naming it; :func:`read` reads
those tensors and dequantises them with the kernels of :mod:`awm_jax.layouts._dequant`, rounding
the result to the dtype the format's own code returns. Formats: GPTQ (``qweight``/``qzeros``/
``scales``/``g_idx``), AWQ GEMM and GEMV, bitsandbytes NF4/FP4 (``weight.absmax``,
``weight.quant_state.bitsandbytes__*``) and LLM.int8 (``SCB``), compressed-tensors
pack-quantized (``weight_packed``) and int-quantized (int8 ``weight`` with ``weight_scale``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from awm_jax.errors import LayoutError
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts._dequant import BNB_FP4, BNB_NF4, awq_gemm, awq_gemv, bnb_4bit, bnb_int8, ct_unpack, gptq

__all__ = ["QuantisedWeight", "as_dtype", "plan", "read"]


# -- planning: which format a checkpoint's weight is stored in ------------------------------------


@dataclasses.dataclass(frozen=True)
class QuantisedWeight:
    """How one integer-quantised weight is stored, found from the tensor headers alone.

    Attributes:
      name: the weight's name (``<module>.weight``), as the layouts ask for it.
      format: ``"GPTQ"``, ``"AWQ GEMM"``, ``"AWQ GEMV"``, ``"bitsandbytes NF4"``,
        ``"bitsandbytes FP4"``, ``"bitsandbytes 8-bit"``, ``"compressed-tensors pack-quantized"``
        or ``"compressed-tensors int-quantized"``.
      shape: the dequantised shape ``(out, in)``.
      tensors: role (``"qweight"``, ``"qzeros"``, ``"scales"``, ``"g_idx"``, ``"weight"``,
        ``"absmax"``...) -> tensor name.
      bits: bits per value.
      group_size: input columns per group (``in`` for one group).
      options: format-specific settings (``zero_plus_one``, ``blocksize``, ``quant_type``,
        ``nested_blocksize``, ``nested_offset``, ``dtype``).
    """

    name: str
    format: str
    shape: tuple[int, int]
    tensors: Mapping[str, str]
    bits: int
    group_size: int
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _int_option(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class _Planner:
    """Finds the format of one weight; every inconsistency is one LayoutError line."""

    def __init__(self, ckpt: Checkpoint, qconfig: Mapping[str, Any]):
        self.ckpt = ckpt
        self.qconfig = qconfig
        method = qconfig.get("quant_method")
        self.method = method.lower() if isinstance(method, str) else None

    def where(self, name: str) -> str:
        return f"{self.ckpt.root}: {name}"

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.ckpt.info(name).shape)

    def dtype(self, name: str) -> str:
        return self.ckpt.info(name).dtype

    def need(self, stem: str, fmt: str, *suffixes: str) -> dict[str, str]:
        out = {}
        for suffix in suffixes:
            name = f"{stem}.{suffix}"
            if name not in self.ckpt:
                raise LayoutError(
                    f"{self.ckpt.root}: {stem} is quantised as {fmt} but {name} is missing, so it cannot be dequantised; "
                    "fetch the complete checkpoint"
                )
            out[suffix] = name
        return out

    def bad(self, stem: str, fmt: str, detail: str) -> LayoutError:
        return LayoutError(
            f"{self.ckpt.root}: {stem} is quantised as {fmt} but {detail}; the checkpoint is inconsistent: fetch it again"
        )

    # -- GPTQ / AWQ ---------------------------------------------------------------------------

    def packed_int(self, name: str, stem: str) -> QuantisedWeight:
        q = self.shape(f"{stem}.qweight")
        s_name = f"{stem}.scales"
        method = self.method
        if method not in ("gptq", "awq"):
            if f"{stem}.g_idx" in self.ckpt:
                method = "gptq"
            elif s_name in self.ckpt and len(q) == 2 and len(self.shape(s_name)) == 2:
                s = self.shape(s_name)
                gptq_fits = q[1] == s[1]
                awq_fits = q[1] * 8 == s[1]
                if gptq_fits == awq_fits:
                    raise LayoutError(
                        f"{self.ckpt.root}: {stem} is GPTQ/AWQ-quantised (qweight, qzeros, scales) but config.json names no "
                        "quantization_config.quant_method and the shapes do not tell which; add the quant_method"
                    )
                method = "gptq" if gptq_fits else "awq"
            else:
                method = "gptq"
        if method == "gptq":
            return self._gptq(name, stem)
        return self._awq(name, stem)

    def _gptq(self, name: str, stem: str) -> QuantisedWeight:
        fmt = "GPTQ"
        fmt_name = self.qconfig.get("checkpoint_format", "gptq")
        if fmt_name not in ("gptq", "gptq_v2"):
            raise LayoutError(
                f"{self.ckpt.root}: {stem} is GPTQ-quantised in checkpoint_format {fmt_name!r}, which awm_jax does not "
                "dequantise (only 'gptq' and 'gptq_v2'); compare the float release of this model instead"
            )
        bits = _int_option(self.qconfig.get("bits"), 4)
        if bits not in (2, 4, 8):
            raise LayoutError(
                f"{self.ckpt.root}: {stem} is {bits}-bit GPTQ, whose packing awm_jax does not dequantise (2, 4 and 8 "
                "bits are); compare the float release of this model instead"
            )
        tensors = self.need(stem, fmt, "qweight", "qzeros", "scales")
        for role in ("qweight", "qzeros"):
            if self.dtype(tensors[role]) not in ("I32", "U32"):
                raise self.bad(stem, fmt, f"{role} is {self.dtype(tensors[role])}, not int32")
        q, z, s = (self.shape(tensors[r]) for r in ("qweight", "qzeros", "scales"))
        per = 32 // bits
        if len(q) != 2 or len(z) != 2 or len(s) != 2:
            raise self.bad(stem, fmt, f"qweight {q}, qzeros {z}, scales {s} are not all matrices")
        rows, out = q[0] * per, q[1]
        groups = s[0]
        if s[1] != out or z != (groups, out // per) or out % per or groups == 0:
            raise self.bad(stem, fmt, f"qweight {q}, qzeros {z} and scales {s} do not fit {bits}-bit packing")
        if f"{stem}.g_idx" in self.ckpt:
            tensors["g_idx"] = f"{stem}.g_idx"
            if self.shape(tensors["g_idx"]) != (rows,):
                raise self.bad(stem, fmt, f"g_idx has shape {self.shape(tensors['g_idx'])}, expected ({rows},)")
        group_size = _int_option(self.qconfig.get("group_size"), -1)
        if group_size <= 0:
            group_size = rows
        if "g_idx" not in tensors and -(-rows // group_size) != groups:
            raise self.bad(stem, fmt, f"{groups} groups of scales do not fit {rows} inputs in groups of {group_size}")
        return QuantisedWeight(name, fmt, (out, rows), tensors, bits, group_size,
                               {"zero_plus_one": fmt_name == "gptq"})

    def _awq(self, name: str, stem: str) -> QuantisedWeight:
        version = str(self.qconfig.get("version", "gemm")).lower()
        if version not in ("gemm", "gemv"):
            raise LayoutError(
                f"{self.ckpt.root}: {stem} is AWQ-quantised with version {version!r}, whose packing awm_jax does not "
                "dequantise (GEMM and GEMV are); compare the float release of this model instead"
            )
        fmt = f"AWQ {version.upper()}"
        bits = _int_option(self.qconfig.get("bits", self.qconfig.get("w_bit")), 4)
        if bits != 4:
            raise LayoutError(
                f"{self.ckpt.root}: {stem} is {bits}-bit AWQ; awm_jax dequantises 4-bit AWQ only; compare the float "
                "release of this model instead"
            )
        tensors = self.need(stem, fmt, "qweight", "qzeros", "scales")
        q, z, s = (self.shape(tensors[r]) for r in ("qweight", "qzeros", "scales"))
        if len(q) != 2 or len(z) != 2 or len(s) != 2:
            raise self.bad(stem, fmt, f"qweight {q}, qzeros {z}, scales {s} are not all matrices")
        group_size = _int_option(self.qconfig.get("group_size", self.qconfig.get("q_group_size")), 128)
        if version == "gemm":
            rows, out = q[0], q[1] * 8
            if group_size <= 0:
                group_size = rows
            groups = -(-rows // group_size)
            if s != (groups, out) or z != (groups, q[1]):
                raise self.bad(stem, fmt, f"qweight {q}, qzeros {z} and scales {s} do not fit groups of {group_size}")
        else:
            out, rows = q[0], q[1] * 8
            if group_size <= 0:
                group_size = rows
            groups = -(-rows // group_size)
            if z[0] != out or s[0] != out or z[1] * 8 < groups or s[1] < groups:
                raise self.bad(stem, fmt, f"qweight {q}, qzeros {z} and scales {s} do not fit groups of {group_size}")
        return QuantisedWeight(name, fmt, (out, rows), tensors, bits, group_size)

    # -- compressed-tensors -------------------------------------------------------------------

    def _ct_args(self, stem: str) -> tuple[int, Mapping[str, Any]]:
        """(num_bits, weights args) of the compressed-tensors config; one set of weights args required."""
        groups = self.qconfig.get("config_groups")
        found = []
        for group in (groups.values() if isinstance(groups, Mapping) else []):
            weights = group.get("weights") if isinstance(group, Mapping) else None
            if isinstance(weights, Mapping):
                found.append(weights)
        bits = {_int_option(w.get("num_bits"), 0) for w in found}
        if len(bits) != 1 or 0 in bits:
            raise LayoutError(
                f"{self.ckpt.root}: {stem} is compressed-tensors quantised but quantization_config.config_groups "
                f"gives {'no' if not bits else 'several'} weight num_bits ({sorted(bits)}); awm_jax needs exactly one: "
                "fix config.json"
            )
        return bits.pop(), found[0]

    def ct_packed(self, name: str, stem: str) -> QuantisedWeight:
        fmt = "compressed-tensors pack-quantized"
        tensors = self.need(stem, fmt, "weight_packed", "weight_scale", "weight_shape")
        bits, args = self._ct_args(stem)
        if bits not in (1, 2, 4, 8) or args.get("type", "int") != "int":
            raise LayoutError(
                f"{self.ckpt.root}: {stem} is compressed-tensors {bits}-bit {args.get('type')} packed, which awm_jax "
                "does not dequantise (1, 2, 4 and 8-bit int are); compare the float release of this model instead"
            )
        shape_values = self.ckpt.read(tensors["weight_shape"]).reshape(-1)
        if shape_values.size != 2 or shape_values.dtype.kind not in "iu" or (shape_values <= 0).any():
            raise self.bad(stem, fmt, f"weight_shape holds {shape_values.tolist()[:4]}, not two sizes")
        out, rows = (int(v) for v in shape_values)
        p = self.shape(tensors["weight_packed"])
        if p != (out, -(-rows // (32 // bits))):
            raise self.bad(stem, fmt, f"weight_packed {p} does not hold {out} x {rows} {bits}-bit values")
        return self._ct_common(name, stem, fmt, tensors, bits, args, out, rows)

    def ct_int(self, name: str, stem: str) -> QuantisedWeight:
        fmt = "compressed-tensors int-quantized"
        bits, args = self._ct_args(stem)
        tensors = {"weight": name, "weight_scale": f"{stem}.weight_scale"}
        shape = self.shape(name)
        if len(shape) != 2:
            raise self.bad(stem, fmt, f"the weight has shape {shape}, not a matrix")
        return self._ct_common(name, stem, fmt, tensors, bits, args, shape[0], shape[1])

    def _ct_common(self, name, stem, fmt, tensors, bits, args, out, rows) -> QuantisedWeight:
        for role in ("weight_zero_point", "weight_g_idx"):
            if f"{stem}.{role}" in self.ckpt:
                tensors[role] = f"{stem}.{role}"
        s = self.shape(tensors["weight_scale"])
        size = math.prod(s)
        if size == 1:
            group_size = rows
        elif len(s) == 2 and s[0] == out and s[1] >= 1:
            group_size = rows if s[1] == 1 else _int_option(args.get("group_size"), -(-rows // s[1]))
            if "weight_g_idx" not in tensors and -(-rows // group_size) != s[1]:
                raise self.bad(stem, fmt, f"{s[1]} scale groups do not fit {rows} inputs in groups of {group_size}")
        else:
            raise self.bad(stem, fmt, f"weight_scale {s} fits neither a tensor, channel nor group scale of {out} x {rows}")
        return QuantisedWeight(name, fmt, (out, rows), tensors, bits, group_size)

    # -- bitsandbytes -------------------------------------------------------------------------

    def bnb_4bit(self, name: str, stem: str, kind: str) -> QuantisedWeight:
        fmt = f"bitsandbytes {kind.upper()}"
        state_name = f"{name}.quant_state.bitsandbytes__{kind}"
        tensors = {"weight": name, "absmax": f"{name}.absmax"}
        if tensors["absmax"] not in self.ckpt:
            raise self.bad(stem, fmt, f"{name}.absmax is missing")
        raw = self.ckpt.read(state_name)
        try:
            state = json.loads(np.ascontiguousarray(raw).view(np.uint8).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise self.bad(stem, fmt, f"{state_name} is not the JSON quant state") from None
        if not isinstance(state, dict):
            raise self.bad(stem, fmt, f"{state_name} is not a JSON object")
        shape = state.get("shape")
        blocksize = state.get("blocksize")
        if (not isinstance(shape, list) or len(shape) != 2 or not all(_int_option(d, 0) > 0 for d in shape)
                or _int_option(blocksize, 0) <= 0 or state.get("quant_type", kind) != kind):
            raise self.bad(stem, fmt, f"its quant state {str(state)[:80]} lacks a 2-D shape, a blocksize or quant_type {kind!r}")
        out, rows = shape
        n = out * rows
        if math.prod(self.shape(name)) != -(-n // 2) or self.dtype(name) != "U8":
            raise self.bad(stem, fmt, f"the packed weight {self.dtype(name)} {self.shape(name)} does not hold {out} x {rows} 4-bit codes")
        blocks = -(-n // blocksize)
        if math.prod(self.shape(tensors["absmax"])) != blocks:
            raise self.bad(stem, fmt, f"absmax holds {math.prod(self.shape(tensors['absmax']))} scales, {blocks} blocks need one each")
        options: dict[str, Any] = {"blocksize": blocksize, "quant_type": kind, "dtype": state.get("dtype")}
        if f"{name}.nested_absmax" in self.ckpt:
            tensors["nested_absmax"] = f"{name}.nested_absmax"
            tensors["nested_quant_map"] = f"{name}.nested_quant_map"
            if tensors["nested_quant_map"] not in self.ckpt:
                raise self.bad(stem, fmt, f"{name}.nested_quant_map is missing")
            nb = state.get("nested_blocksize")
            offset = state.get("nested_offset")
            if _int_option(nb, 0) <= 0 or not isinstance(offset, (int, float)) or isinstance(offset, bool):
                raise self.bad(stem, fmt, "its quant state lacks nested_blocksize or nested_offset")
            if math.prod(self.shape(tensors["nested_quant_map"])) != 256 or math.prod(
                    self.shape(tensors["nested_absmax"])) != -(-blocks // nb):
                raise self.bad(stem, fmt, "nested_absmax / nested_quant_map do not fit the absmax codes")
            options.update(nested_blocksize=nb, nested_offset=float(offset))
        if f"{name}.quant_map" in self.ckpt:
            tensors["quant_map"] = f"{name}.quant_map"
        return QuantisedWeight(name, fmt, (out, rows), tensors, 4, blocksize, options)

    def bnb_int8(self, name: str, stem: str) -> QuantisedWeight:
        fmt = "bitsandbytes 8-bit"
        shape = self.shape(name)
        scb = f"{stem}.SCB"
        if len(shape) != 2 or math.prod(self.shape(scb)) != shape[0]:
            raise self.bad(stem, fmt, f"SCB {self.shape(scb)} does not give one scale per row of {shape}")
        return QuantisedWeight(name, fmt, (shape[0], shape[1]), {"weight": name, "SCB": scb}, 8, shape[1])


def plan(ckpt: Checkpoint, name: str, qconfig: Mapping[str, Any]) -> QuantisedWeight | None:
    """The integer-quantised storage of weight ``name``, or ``None`` when it is stored in no format known here.

    Only headers (and the small bitsandbytes quant-state and compressed-tensors ``weight_shape``
    tensors) are read.

    Raises:
      LayoutError: the weight is in a known format whose side tensors are missing or do not fit,
        or in a variant that is not dequantised (named in the message).
    """
    stem = name[: -len(".weight")]
    planner = _Planner(ckpt, qconfig)
    if name not in ckpt:
        if f"{stem}.qweight" in ckpt:
            return planner.packed_int(name, stem)
        if f"{stem}.weight_packed" in ckpt:
            return planner.ct_packed(name, stem)
        return None
    for kind in ("nf4", "fp4"):
        if f"{name}.quant_state.bitsandbytes__{kind}" in ckpt:
            return planner.bnb_4bit(name, stem, kind)
    dtype = ckpt.info(name).dtype
    if dtype == "I8" and f"{stem}.SCB" in ckpt:
        return planner.bnb_int8(name, stem)
    if dtype in ("I8", "U8", "I16", "I32") and f"{stem}.weight_scale" in ckpt and (
            str(qconfig.get("quant_method", "")).lower() == "compressed-tensors" or "config_groups" in qconfig):
        return planner.ct_int(name, stem)
    return None


def as_dtype(array: np.ndarray, dtype_name: object) -> np.ndarray:
    """Rounds a float32 result to the dtype the format's own code returns (``float16``,
    ``bfloat16``), then back to float32."""
    target = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(str(dtype_name).removeprefix("torch."))
    return array if target is None else array.astype(target).astype(np.float32)


def read(ckpt: Checkpoint, w: QuantisedWeight) -> np.ndarray:
    """Dequantises a planned weight to float32 ``[out, in]``.

    Raises:
      LayoutError: a stored index (``g_idx``, a code) lies outside its table.
    """
    t = {role: ckpt.read(name) for role, name in w.tensors.items()}
    out, rows = w.shape
    stem = w.name[: -len(".weight")]

    def check_groups(g: np.ndarray, groups: int, what: str) -> np.ndarray:
        g = np.asarray(g).reshape(-1).astype(np.int64)
        if g.size != rows or (g.size and (g.min() < 0 or g.max() >= groups)):
            raise LayoutError(f"{ckpt.root}: {stem}.{what} has group indices outside [0, {groups}); the checkpoint is "
                              "inconsistent: fetch it again")
        return g

    if w.format == "GPTQ":
        groups = t["scales"].shape[0]
        g = check_groups(t["g_idx"], groups, "g_idx") if "g_idx" in t else np.arange(rows) // w.group_size
        result = gptq(t["qweight"], t["qzeros"], t["scales"], g, w.bits, w.options["zero_plus_one"])
        return as_dtype(result, t["scales"].dtype.name)
    if w.format == "AWQ GEMM":
        return as_dtype(awq_gemm(t["qweight"], t["qzeros"], t["scales"], w.group_size), t["scales"].dtype.name)
    if w.format == "AWQ GEMV":
        return as_dtype(awq_gemv(t["qweight"], t["qzeros"], t["scales"], w.group_size), t["scales"].dtype.name)
    if w.format.startswith("bitsandbytes") and w.bits == 4:
        code = BNB_NF4 if w.options["quant_type"] == "nf4" else BNB_FP4
        if "quant_map" in t and (t["quant_map"].size != 16 or not np.allclose(
                t["quant_map"].astype(np.float32).reshape(-1), code, rtol=0, atol=1e-6)):
            raise LayoutError(f"{ckpt.root}: {w.name}.quant_map is not bitsandbytes' {w.options['quant_type'].upper()} "
                              "table; the checkpoint is inconsistent: fetch it again")
        nested = None
        if "nested_absmax" in t:
            nested = (t["nested_absmax"], t["nested_quant_map"].reshape(-1), w.options["nested_blocksize"],
                      w.options["nested_offset"])
            if t["absmax"].dtype != np.uint8:
                raise LayoutError(f"{ckpt.root}: {w.name}.absmax is {t['absmax'].dtype}, but double quantisation "
                                  "stores uint8 codes; the checkpoint is inconsistent: fetch it again")
        return as_dtype(bnb_4bit(t["weight"], t["absmax"], w.shape, w.group_size, code, nested), w.options["dtype"])
    if w.format == "bitsandbytes 8-bit":
        return bnb_int8(t["weight"], t["SCB"])
    # compressed-tensors
    if w.format == "compressed-tensors pack-quantized":
        q = ct_unpack(t["weight_packed"], w.bits, rows, axis=1)
    else:
        q = t["weight"].astype(np.int32)
    scale = t["weight_scale"].astype(np.float32)
    groups = 1 if scale.size == 1 else scale.shape[1]
    g = (check_groups(t["weight_g_idx"], groups, "weight_g_idx") if "weight_g_idx" in t
         else np.minimum(np.arange(rows) // w.group_size, groups - 1))
    scale = np.broadcast_to(scale.reshape(-1, groups) if scale.size > 1 else scale.reshape(1, 1), (out, groups))
    zp = np.zeros((out, groups), np.int32)
    if "weight_zero_point" in t:
        z = t["weight_zero_point"]
        if w.format == "compressed-tensors pack-quantized" and z.dtype == np.int32 and z.shape[0] == -(-out // (32 // w.bits)):
            z = ct_unpack(z, w.bits, out, axis=0)
        zp = np.broadcast_to(np.asarray(z, np.int32).reshape(-1, groups) if z.size > 1 else np.asarray(z, np.int32).reshape(1, 1),
                             (out, groups))
    result = (q - zp[:, g]).astype(np.float32) * scale[:, g]
    return as_dtype(result, t["weight_scale"].dtype.name)
