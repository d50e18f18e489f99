"""Quantised storage: FP8 is dequantised exactly, damaged or unknown formats are refused by name, side tensors are never weights."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.errors import LayoutError
from awm_jax.layouts import WeightReader, detect
from awm_jax.synthetic import llama_config, write_model

F8 = np.dtype(ml_dtypes.float8_e4m3fn)
HIDDEN, VOCAB = 32, 16


def _spec(name, arr):
    arr = np.asarray(arr)
    return (name, arr.shape, arr.dtype, lambda a=arr: a)


def _llama(folder, q_specs, k_specs=None, config_extra=None, rng=None):
    """A 1-layer Llama checkpoint whose layer-0 query/key tensors are the given specs."""
    rng = rng or np.random.default_rng(0)
    emb = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    k_specs = k_specs or [_spec("model.layers.0.self_attn.k_proj.weight",
                                rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32))]
    cfg = llama_config(VOCAB, HIDDEN, 1, 2, 2, 16)
    cfg.update(config_extra or {})
    specs = [_spec("model.embed_tokens.weight", emb), *q_specs, *k_specs]
    return write_model(folder, specs, cfg, [f"t{i}" for i in range(VOCAB)])


def _block_reference(q: np.ndarray, scale: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Dequantisation written out block by block (DeepSeek-V3 ``weight_dequant`` semantics)."""
    out = q.astype(np.float32).copy()
    for bi in range(math.ceil(q.shape[0] / block[0])):
        for bj in range(math.ceil(q.shape[1] / block[1])):
            out[bi * block[0]:(bi + 1) * block[0], bj * block[1]:(bj + 1) * block[1]] *= scale[bi, bj]
    return out


@pytest.mark.parametrize("block", [(16, 32), (24, 24), (128, 128)])
def test_fp8_block_scales_with_partial_edge_blocks(tmp_path, block):
    rng = np.random.default_rng(1)
    rows = HIDDEN + 8  # 40 rows: partial blocks at the bottom edge
    q = (rng.standard_normal((rows, HIDDEN)) * 100).astype(F8)
    grid = (math.ceil(rows / block[0]), math.ceil(HIDDEN / block[1]))
    scale = rng.uniform(1e-4, 1e-2, grid).astype(np.float32)
    cfg = {"quantization_config": {"quant_method": "fp8", "weight_block_size": list(block)}}
    specs = [_spec("model.layers.0.self_attn.q_proj.weight", q),
             _spec("model.layers.0.self_attn.q_proj.weight_scale_inv", scale)]
    folder = _llama(tmp_path / "m", specs, config_extra=cfg)
    got = WeightReader(Checkpoint(folder)).matrix("model.layers.0.self_attn.q_proj.weight")
    np.testing.assert_allclose(got, _block_reference(q, scale, block), rtol=1e-7, atol=0)


@pytest.mark.parametrize("scale_shape", [(1,), (1, 1), (HIDDEN,), (HIDDEN, 1)])
def test_fp8_per_tensor_and_per_row_weight_scale(tmp_path, scale_shape):
    rng = np.random.default_rng(2)
    q = (rng.standard_normal((HIDDEN, HIDDEN)) * 100).astype(F8)
    scale = rng.uniform(1e-3, 1e-2, scale_shape).astype(np.float32)
    folder = _llama(tmp_path / "m", [_spec("model.layers.0.self_attn.q_proj.weight", q),
                                     _spec("model.layers.0.self_attn.q_proj.weight_scale", scale)])
    got = WeightReader(Checkpoint(folder)).matrix("model.layers.0.self_attn.q_proj.weight")
    want = q.astype(np.float32) * (scale.reshape(-1, 1) if scale.size > 1 else scale.reshape(()))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)


def test_fp8_e8m0_exponent_scales(tmp_path):
    rng = np.random.default_rng(3)
    q = (rng.standard_normal((HIDDEN, HIDDEN)) * 10).astype(F8)
    exps = rng.integers(110, 130, (1, 2)).astype(np.uint8)
    folder = _llama(tmp_path / "m", [_spec("model.layers.0.self_attn.q_proj.weight", q),
                                     _spec("model.layers.0.self_attn.q_proj.weight_scale", exps)],
                    config_extra={"quantization_config": {"quant_method": "fp8", "weight_block_size": [32, 16]}})
    got = WeightReader(Checkpoint(folder)).matrix("model.layers.0.self_attn.q_proj.weight")
    want = _block_reference(q, np.exp2(exps.astype(np.float64) - 127).astype(np.float32), (32, 16))
    np.testing.assert_array_equal(got, want)


def test_fp8_without_scale_is_refused(tmp_path):
    q = np.ones((HIDDEN, HIDDEN), np.float32).astype(F8)
    folder = _llama(tmp_path / "m", [_spec("model.layers.0.self_attn.q_proj.weight", q)])
    with pytest.raises(LayoutError, match=r"FP8 .*weight_scale_inv.*missing"):
        detect(Checkpoint(folder))


def test_fp8_scale_grid_that_does_not_tile_is_refused(tmp_path):
    q = np.ones((HIDDEN, HIDDEN), np.float32).astype(F8)
    folder = _llama(tmp_path / "m", [_spec("model.layers.0.self_attn.q_proj.weight", q),
                                     _spec("model.layers.0.self_attn.q_proj.weight_scale_inv",
                                           np.ones((3, 3), np.float32))],
                    config_extra={"quantization_config": {"quant_method": "fp8", "weight_block_size": [16, 16]}})
    with pytest.raises(LayoutError, match=r"3 x 3 block scales do not tile"):
        detect(Checkpoint(folder))


# GPTQ, AWQ, bitsandbytes and compressed-tensors packed weights are dequantised: tests/io/test_quantized.py.


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_bitsandbytes_4bit_with_a_damaged_quant_state_is_refused_by_name(tmp_path, kind):
    stem = "model.layers.0.self_attn.q_proj"
    specs = [_spec(f"{stem}.weight", np.zeros((HIDDEN * HIDDEN // 2, 1), np.uint8)),
             _spec(f"{stem}.weight.absmax", np.ones(HIDDEN * HIDDEN // 64, np.float32)),
             _spec(f"{stem}.weight.quant_map", np.linspace(-1, 1, 16).astype(np.float32)),
             _spec(f"{stem}.weight.quant_state.bitsandbytes__{kind}", np.zeros(8, np.uint8))]
    with pytest.raises(LayoutError, match=rf"quantised as bitsandbytes {kind.upper()} but .*quant state"):
        detect(Checkpoint(_llama(tmp_path / "m", specs)))


def test_compressed_tensors_packed_without_its_shape_is_refused_by_name(tmp_path):
    stem = "model.layers.0.self_attn.q_proj"
    specs = [_spec(f"{stem}.weight_packed", np.ones((HIDDEN, HIDDEN // 8), np.int32)),
             _spec(f"{stem}.weight_scale", np.ones((HIDDEN, 1), np.float16))]
    with pytest.raises(LayoutError, match=r"quantised as compressed-tensors pack-quantized but .*weight_shape is missing"):
        detect(Checkpoint(_llama(tmp_path / "m", specs)))


def test_int8_with_weight_scale_is_refused_by_name(tmp_path):
    stem = "model.layers.0.self_attn.q_proj"
    specs = [_spec(f"{stem}.weight", np.ones((HIDDEN, HIDDEN), np.int8)),
             _spec(f"{stem}.weight_scale", np.ones((HIDDEN, 1), np.float32))]
    with pytest.raises(LayoutError, match=r"I8 with .*weight_scale"):
        detect(Checkpoint(_llama(tmp_path / "m", specs)))


def test_side_tensors_of_weight_shape_are_never_read_as_weights(tmp_path):
    """A ``weight_scale`` (or ``absmax``) shaped like the weight sits next to it: the weight is read."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    k = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    decoys = [_spec(f"model.layers.0.self_attn.{name}", rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32))
              for name in ("q_proj.weight_scale", "q_proj.weight.absmax", "k_proj.weight_scale_inv")]
    folder = _llama(tmp_path / "m", [*decoys, _spec("model.layers.0.self_attn.q_proj.weight", q)],
                    [_spec("model.layers.0.self_attn.k_proj.weight", k)])
    got_q, got_k = detect(Checkpoint(folder)).read_qk(0)
    np.testing.assert_array_equal(got_q, q)
    np.testing.assert_array_equal(got_k, k)


def test_a_side_tensor_alone_is_not_a_weight(tmp_path):
    """Only ``q_proj.weight_scale`` (no ``q_proj.weight``): no layout fits, and the error lists the names."""
    rng = np.random.default_rng(6)
    folder = _llama(tmp_path / "m", [_spec("model.layers.0.self_attn.q_proj.weight_scale",
                                           rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32))])
    with pytest.raises(LayoutError, match=r"no known layout fits.*q_proj\.weight_scale.*docs/layouts\.md"):
        detect(Checkpoint(folder))
