"""Integer-quantised checkpoints (GPTQ, AWQ GEMM/GEMV, bitsandbytes NF4/FP4/int8, compressed-tensors)
are dequantised as each format's published code does.

The packers here are written from each format's specification (the storage described in
``docs/layouts.md``), apart from ``awm_jax/layouts/_dequant.py``; the formats' own tools
(AutoGPTQ/GPTQModel, AutoAWQ, bitsandbytes, llm-compressor) need a GPU to quantise, so these
fixtures are "documented". Each packer quantises a float matrix; the test checks that the
reader returns exactly the packer's own dequantised values (a float64 reference from the same
integers), and that a whole model quantised this way scores against its float parent as the
acceptance figures ask (and not against an independent model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import awm_jax
from awm_jax.errors import LayoutError
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import WeightReader, detect
from awm_jax.synthetic import write_safetensors

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0])
FP4 = np.array([0.0, 0.005208333333, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25,
                -0.0, -0.005208333333, -0.66666667, -1.0, -0.33333333, -0.5, -0.16666667, -0.25])


# -- packers, from the formats' specifications --------------------------------------------------------


def _words(fields: np.ndarray, bits: int) -> np.ndarray:
    """Packs unsigned fields along the last axis, ``32 / bits`` per int32, field ``j`` at bit ``bits j``."""
    per = 32 // bits
    f = (fields.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint64).reshape(*fields.shape[:-1], -1, per)
    word = np.zeros(f.shape[:-1], np.uint64)
    for j in range(per):
        word |= f[..., j] << np.uint64(bits * j)
    return word.astype(np.uint32).view(np.int32)


def _minmax(w_groups: np.ndarray, bits: int, min_zero: int = 0):
    """Asymmetric min-max quantisation of groups along axis -1: integers, scale, zero (at least ``min_zero``)."""
    top = (1 << bits) - 1
    lo, hi = np.minimum(w_groups.min(-1), 0), np.maximum(w_groups.max(-1), 0)
    scale = (np.maximum(hi - lo, 1e-8) / top).astype(np.float16).astype(np.float64)
    zero = np.clip(np.round(-lo / scale), min_zero, top)
    q = np.clip(np.round(w_groups / scale[..., None]) + zero[..., None], 0, top)
    return q.astype(np.int64), scale.astype(np.float16), zero.astype(np.int64)


def pack_gptq(w: np.ndarray, bits: int = 4, group: int = 128, act_order: bool = False, seed: int = 0):
    """GPTQ (AutoGPTQ ``checkpoint_format = "gptq"``): returns tensors and the float64 dequantised reference."""
    out, n = w.shape
    perm = np.random.default_rng(seed).permutation(n) if act_order else np.arange(n)
    g_idx = np.empty(n, np.int32)
    g_idx[perm] = np.arange(n) // group  # act-order: groups follow the permuted column order
    groups = -(-n // group)
    q = np.zeros((n, out), np.int64)
    scales = np.zeros((groups, out), np.float16)
    zeros = np.zeros((groups, out), np.int64)
    for g in range(groups):
        cols = np.flatnonzero(g_idx == g)
        qg, s, z = _minmax(w[:, cols], bits, min_zero=1)  # the "gptq" format stores zero - 1
        q[cols] = qg.T
        scales[g], zeros[g] = s, z
    ref = (q - zeros[g_idx]) * scales.astype(np.float64)[g_idx]
    tensors = {"qweight": _words(q.T, bits).T.copy(), "qzeros": _words(zeros - 1, bits), "scales": scales,
               "g_idx": g_idx}
    return tensors, ref.T


def pack_awq_gemm(w: np.ndarray, group: int = 128):
    out, n = w.shape
    groups = n // group
    qg, s, z = _minmax(w.reshape(out, groups, group), 4)  # [out, groups, group]
    q = qg.reshape(out, n).T  # [in, out]
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    reordered = q.reshape(n, out // 8, 8)[:, :, order].reshape(n, out)
    zr = z.T.reshape(groups, out // 8, 8)[:, :, order].reshape(groups, out)
    ref = (q - np.repeat(z.T, group, axis=0)) * np.repeat(s.T.astype(np.float64), group, axis=0)
    return {"qweight": _words(reordered, 4), "qzeros": _words(zr, 4), "scales": s.T.copy()}, ref.T


def pack_awq_gemv(w: np.ndarray, group: int = 64):
    out, n = w.shape
    groups = n // group
    qg, s, z = _minmax(w.reshape(out, groups, group), 4)
    q = qg.reshape(out, n)
    width = -(-groups // 8)
    width = -(-width // (128 // group if group < 128 else 1)) * (128 // group if group < 128 else 1)
    zpad = np.zeros((out, width * 8), np.int64)
    zpad[:, :groups] = z
    spad = np.zeros((out, width * 8), np.float16)
    spad[:, :groups] = s
    ref = (q - np.repeat(z, group, axis=1)) * np.repeat(s.astype(np.float64), group, axis=1)
    return {"qweight": _words(q, 4), "qzeros": _words(zpad, 4), "scales": spad}, ref


def pack_bnb_4bit(w: np.ndarray, kind: str = "nf4", blocksize: int = 64, nested: bool = False):
    table = NF4 if kind == "nf4" else FP4
    flat = w.reshape(-1).astype(np.float64)
    blocks = flat.reshape(-1, blocksize)
    absmax = np.abs(blocks).max(1)
    codes = np.abs(blocks[:, :, None] / absmax[:, None, None] - table).argmin(-1).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    state = {"quant_type": kind, "blocksize": blocksize, "dtype": "float32", "shape": list(w.shape)}
    tensors = {"weight": packed, "weight.quant_map": table.astype(np.float32)}
    scale = absmax.astype(np.float32)
    if nested:
        offset = float(scale.mean())
        nmap = np.linspace(-1, 1, 256).astype(np.float32)
        centred = (scale - offset).reshape(-1, 4)  # nested blocks of 4 scales
        nabs = np.abs(centred).max(1).astype(np.float32)
        acodes = np.abs(centred[:, :, None] / nabs[:, None, None] - nmap).argmin(-1).astype(np.uint8)
        scale = nmap[acodes].reshape(-1) * np.repeat(nabs, 4) + np.float32(offset)
        tensors.update({"weight.absmax": acodes.reshape(-1), "weight.nested_absmax": nabs,
                        "weight.nested_quant_map": nmap})
        state.update(nested_blocksize=4, nested_dtype="float32", nested_offset=offset)
    else:
        tensors["weight.absmax"] = scale
    tensors[f"weight.quant_state.bitsandbytes__{kind}"] = np.frombuffer(json.dumps(state).encode(), np.uint8)
    ref = table[codes] * np.repeat(scale.astype(np.float64), blocksize)
    return tensors, ref.reshape(w.shape)


def pack_bnb_int8(w: np.ndarray):
    scb = np.abs(w).max(1).astype(np.float32)
    q = np.clip(np.round(w * 127 / scb[:, None]), -127, 127).astype(np.int8)
    return {"weight": q, "SCB": scb}, q * (scb.astype(np.float64)[:, None] / 127)


def pack_ct(w: np.ndarray, bits: int = 4, group: int = 32, symmetric: bool = True):
    """compressed-tensors pack-quantized, strategy group."""
    out, n = w.shape
    groups = n // group
    wg = w.reshape(out, groups, group)
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = (np.abs(wg).max(-1) / qmax).astype(np.float16)
        zp = np.zeros((out, groups), np.int64)
        q = np.clip(np.round(wg / scale[..., None].astype(np.float64)), -qmax - 1, qmax).astype(np.int64)
    else:
        qu, scale, zu = _minmax(wg, bits)
        off = 1 << (bits - 1)
        q, zp = qu - off, zu - off
    q = q.reshape(out, n)
    tensors = {"weight_packed": _words(q + (1 << (bits - 1)), bits), "weight_scale": scale,
               "weight_shape": np.array([out, n], np.int32)}
    if not symmetric:
        tensors["weight_zero_point"] = _words((zp + (1 << (bits - 1))).T, bits).T.copy()
    ref = (q - np.repeat(zp, group, axis=1)) * np.repeat(scale.astype(np.float64), group, axis=1)
    return tensors, ref


# -- model writing ------------------------------------------------------------------------------------


def _read_all(folder: Path) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(folder)
    return {name: np.asarray(ckpt.read(name), np.float32) for name in ckpt.tensors}


def quantised_copy(parent: Path, dest: Path, pack, config: dict, names=("q_proj", "k_proj")) -> Path:
    """``parent`` with every attention ``names`` weight replaced by ``pack``'s tensors."""
    weights = _read_all(parent)
    specs = []
    for name, arr in weights.items():
        stem = name[: -len(".weight")]
        if name.endswith(".weight") and stem.rsplit(".", 1)[-1] in names:
            tensors, _ = pack(arr)
            for suffix, t in tensors.items():
                full = f"{stem}.{suffix}" if suffix != "weight" else name
                specs.append((full, t.shape, t.dtype, lambda t=t: t))
        else:
            specs.append((name, arr.shape, np.float32, lambda a=arr: a))
    dest.mkdir(parents=True)
    write_safetensors(dest / "model.safetensors", specs)
    cfg = json.loads((parent / "config.json").read_text())
    cfg["quantization_config"] = config
    (dest / "config.json").write_text(json.dumps(cfg))
    shutil.copy(parent / "tokenizer.json", dest / "tokenizer.json")
    return dest


GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
AWQ_GEMV = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemv"}
BNB = {"quant_method": "bitsandbytes", "load_in_4bit": True}
BNB8 = {"quant_method": "bitsandbytes", "load_in_8bit": True}
CT = {"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                                      "strategy": "group", "group_size": 32}}}}

#: format -> (packer, quantization_config, lowest mean score accepted against the float parent)
FORMATS = {
    "gptq": (pack_gptq, GPTQ, 0.95),
    "gptq_act_order": (lambda w: pack_gptq(w, act_order=True, group=32), {**GPTQ, "group_size": 32, "desc_act": True},
                       0.95),
    "gptq_8bit": (lambda w: pack_gptq(w, bits=8), {**GPTQ, "bits": 8}, 0.99),
    "awq_gemm": (pack_awq_gemm, AWQ, 0.95),
    "awq_gemv": (pack_awq_gemv, AWQ_GEMV, 0.95),
    "nf4": (pack_bnb_4bit, BNB, 0.93),
    "nf4_double": (lambda w: pack_bnb_4bit(w, nested=True), BNB, 0.93),
    "fp4": (lambda w: pack_bnb_4bit(w, "fp4"), BNB, 0.90),
    "int8": (pack_bnb_int8, BNB8, 0.99),
    "ct_pack": (pack_ct, CT, 0.95),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantised_equals_the_packers_reference(fmt, tmp_path):
    pack, config, _ = FORMATS[fmt]
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128)).astype(np.float32) * 0.05
    tensors, ref = pack(w)
    stem = "model.layers.0.self_attn.q_proj"
    specs = [(f"{stem}.{s}" if s != "weight" else f"{stem}.weight", t.shape, t.dtype, lambda t=t: t)
             for s, t in tensors.items()]
    write_safetensors(tmp_path / "model.safetensors", specs)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config}))
    reader = WeightReader(Checkpoint(tmp_path))
    assert reader.shape(f"{stem}.weight") == (64, 128)
    got = reader.matrix(f"{stem}.weight")
    assert got.dtype == np.float32 and got.shape == (64, 128)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)  # scales are float16: the reference rounds likewise
    assert np.abs(got - w).max() < 0.5 * np.abs(w).max()  # and it is a quantisation of w, not noise


def test_asymmetric_compressed_tensors_with_packed_zero_points(tmp_path):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((64, 128)) * 0.05 + 0.02).astype(np.float32)
    tensors, ref = pack_ct(w, symmetric=False)
    config = json.loads(json.dumps(CT))
    config["config_groups"]["group_0"]["weights"]["symmetric"] = False
    stem = "model.layers.0.self_attn.q_proj"
    write_safetensors(tmp_path / "model.safetensors",
                      [(f"{stem}.{s}", t.shape, t.dtype, lambda t=t: t) for s, t in tensors.items()])
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config}))
    got = WeightReader(Checkpoint(tmp_path)).matrix(f"{stem}.weight")
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)




@pytest.mark.parametrize("fmt", FORMATS)
def test_quantised_model_scores_as_its_float_parent(fmt, parity, tmp_path):
    pack, config, floor = FORMATS[fmt]
    copy = quantised_copy(parity / "llama_a", tmp_path / fmt, pack, config)
    parent = awm_jax.compare(parity / "llama_a", copy, cache=False, device="cpu")
    assert parent.mean >= floor, f"{fmt}: {parent.mean:.4f}"
    assert parent.verdict == "derived"
    independent = awm_jax.compare(parity / "llama_b", copy, cache=False, device="cpu")
    assert independent.verdict != "derived", f"{fmt}: {independent.mean:.4f}"


def _gptq_folder(tmp_path, config, drop=()):
    rng = np.random.default_rng(3)
    tensors, _ = pack_gptq(rng.standard_normal((64, 128)).astype(np.float32))
    stem = "model.layers.0.self_attn.q_proj"
    write_safetensors(tmp_path / "model.safetensors",
                      [(f"{stem}.{s}", t.shape, t.dtype, lambda t=t: t) for s, t in tensors.items() if s not in drop])
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config}))
    return WeightReader(Checkpoint(tmp_path)), f"{stem}.weight"


@pytest.mark.parametrize("config, drop, match", [
    ({**GPTQ, "bits": 3}, (), "3-bit GPTQ"),
    ({**GPTQ, "checkpoint_format": "marlin"}, (), "checkpoint_format 'marlin'"),
    ({**AWQ, "version": "gemv_fast"}, (), "version 'gemv_fast'"),
    (GPTQ, ("qzeros",), "qzeros is missing"),
    ({**GPTQ, "bits": 8}, (), "do not fit 8-bit packing"),
])
def test_unknown_variants_and_damaged_side_tensors_are_refused_by_name(tmp_path, config, drop, match):
    reader, name = _gptq_folder(tmp_path, config, drop)
    with pytest.raises(LayoutError, match=match):
        reader.shape(name)


def test_gptq_g_idx_out_of_range_is_refused(tmp_path):
    reader, name = _gptq_folder(tmp_path, GPTQ)
    stem = name[: -len(".weight")]
    ckpt = reader.ckpt
    tensors = {n: ckpt.read(n) for n in ckpt.tensors}
    tensors[f"{stem}.g_idx"] = np.full(128, 7, np.int32)
    write_safetensors(tmp_path / "model.safetensors", [(n, t.shape, t.dtype, lambda t=t: t) for n, t in tensors.items()])
    with pytest.raises(LayoutError, match="g_idx has group indices outside"):
        WeightReader(Checkpoint(tmp_path)).matrix(name)


def test_layout_detection_reads_a_quantised_model(parity, tmp_path):
    copy = quantised_copy(parity / "llama_a", tmp_path / "gptq", pack_gptq, GPTQ)
    resolved = detect(Checkpoint(copy))
    float_q, _ = detect(Checkpoint(parity / "llama_a")).read_qk(0)
    q, _ = resolved.read_qk(0)
    assert q.shape == float_q.shape
    assert resolved.reader.quantisation("model.layers.0.self_attn.q_proj.weight") == "GPTQ"
