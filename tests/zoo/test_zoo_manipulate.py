"""Every manipulation preserves the model's function; broken variants do not."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo.manipulate import (
    APPROXIMATE,
    MANIPULATIONS,
    fold_norm_gains,
    manipulate,
    random_orthogonal,
    random_signed_permutation,
    rotate_rope_pairs,
    scale_qk,
    transform_residual,
)

from .zoo_helpers import ARCHS, logits, random_state, tiny_config

#: Logits must agree to this fraction of their largest magnitude (float32 forward).
REL_ATOL = 1e-4


def _assert_same_function(cfg, a, b, ids, feats):
    fa = feats if cfg.architecture == "llava" else None
    la, lb = logits(cfg, a, ids, fa), logits(cfg, b, ids, fa)
    np.testing.assert_allclose(lb, la, rtol=0, atol=REL_ATOL * np.abs(la).max())


def _assert_function_changed(cfg, a, b, ids, feats):
    fa = feats if cfg.architecture == "llava" else None
    la, lb = logits(cfg, a, ids, fa), logits(cfg, b, ids, fa)
    assert np.abs(lb - la).max() > 100 * REL_ATOL * np.abs(la).max()


def _qk(cfg, state, layer=0):
    pre = "language_model." if cfg.architecture == "llava" else ""
    p = f"{pre}model.layers.{layer}.self_attn."
    return state[p + "q_proj.weight"], state[p + "k_proj.weight"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", sorted(set(MANIPULATIONS) - APPROXIMATE))
def test_manipulation_preserves_logits(arch, kind, ids, feats):
    cfg = tiny_config(arch)
    state = random_state(cfg, seed=5)
    out = manipulate(kind, cfg, state, seed=11)
    assert set(out) == set(state)
    assert all(out[k].shape == state[k].shape and out[k].dtype == np.float32 for k in state)
    q0, _ = _qk(cfg, state)
    q1, _ = _qk(cfg, out)
    assert np.abs(q1 - q0).max() > 1e-2, "the manipulation left W_q unchanged"
    _assert_same_function(cfg, state, out, ids, feats)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.floats(0.05, 20.0))
def test_qk_scale_any_factor(seed, c):
    cfg = tiny_config()
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (1, 9)).astype(np.int32)
    state = random_state(cfg, seed % 7)
    out = scale_qk(cfg, state, c)
    q0, k0 = _qk(cfg, state)
    q1, k1 = _qk(cfg, out)
    np.testing.assert_allclose(q1, q0 * c, rtol=1e-6)
    np.testing.assert_allclose(k1, k0 / c, rtol=1e-6)
    _assert_same_function(cfg, state, out, ids, None)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_signed_permutation_is_exact_and_permutes_gains(seed):
    cfg = tiny_config()
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (1, 9)).astype(np.int32)
    state = random_state(cfg, seed % 5)
    r = random_signed_permutation(cfg.hidden_size, seed)
    perm = np.argmax(np.abs(r), axis=0)
    signs = r[perm, np.arange(cfg.hidden_size)]
    out = transform_residual(cfg, state, r)
    np.testing.assert_array_equal(out["model.embed_tokens.weight"],
                                  state["model.embed_tokens.weight"][:, perm] * signs)
    np.testing.assert_array_equal(out["model.norm.weight"], state["model.norm.weight"][perm])
    np.testing.assert_array_equal(out["model.layers.1.self_attn.o_proj.weight"],
                                  state["model.layers.1.self_attn.o_proj.weight"][perm] * signs[:, None])
    _assert_same_function(cfg, state, out, ids, None)


def test_sign_flipped_gains_break_the_function(ids, feats):
    """Signs must cancel between writers and readers; flipping the gains as well is wrong."""
    cfg = tiny_config()
    state = random_state(cfg)
    r = random_signed_permutation(cfg.hidden_size, 3)
    out = transform_residual(cfg, state, r)
    signs = r[np.argmax(np.abs(r), axis=0), np.arange(cfg.hidden_size)]
    wrong = {k: (v * signs if k.endswith("layernorm.weight") or k == "model.norm.weight" else v)
             for k, v in out.items()}
    _assert_function_changed(cfg, state, wrong, ids, feats)


def test_rope_rotation_must_match_between_q_and_k(ids, feats):
    cfg = tiny_config()
    state = random_state(cfg)
    rng = np.random.default_rng(0)
    angles = rng.uniform(-np.pi, np.pi, (2, 2, 4))
    good = rotate_rope_pairs(cfg, state, angles)
    _assert_same_function(cfg, state, good, ids, feats)
    q_only = dict(state)
    for i in range(2):
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        q_only[name] = good[name]
    _assert_function_changed(cfg, state, q_only, ids, feats)


def test_rope_rotation_of_pairs_that_rope_does_not_rotate_breaks(ids, feats):
    """Rotating dimensions (i, i + 1) instead of (i, i + d/2) does not commute with RoPE."""
    cfg = tiny_config()
    state = random_state(cfg)
    d = cfg.head_dim
    perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])  # interleaved layout
    inv = np.argsort(perm)

    def reorder(s, order):
        out = dict(s)
        for i in range(cfg.num_hidden_layers):
            for p, heads in (("q", cfg.num_attention_heads), ("k", cfg.num_key_value_heads)):
                name = f"model.layers.{i}.self_attn.{p}_proj.weight"
                w = s[name].reshape(heads, d, -1)[:, order]
                out[name] = w.reshape(heads * d, -1)
        return out

    angles = np.random.default_rng(1).uniform(0.5, 2.5, (2, 2, d // 2))
    wrong = reorder(rotate_rope_pairs(cfg, reorder(state, perm), angles), inv)
    _assert_function_changed(cfg, state, wrong, ids, feats)


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_norm_gains_preserves_logits(arch, ids, feats):
    cfg = tiny_config(arch)
    state = random_state(cfg)
    folded = fold_norm_gains(cfg, state)
    gains = [k for k in folded if k.endswith("layernorm.weight") or k.endswith("model.norm.weight")]
    assert gains and all(np.all(folded[k] == 1.0) for k in gains)
    _assert_same_function(cfg, state, folded, ids, feats)


def test_dense_rotation_needs_folded_gains():
    cfg = tiny_config()
    state = random_state(cfg)
    with pytest.raises(ValueError, match="fold_norm_gains"):
        transform_residual(cfg, state, random_orthogonal(cfg.hidden_size, 0))


def test_dense_rotation_without_folding_would_break(ids, feats):
    """Rotating around unit gains that were never folded (gains dropped) changes the model."""
    cfg = tiny_config()
    state = random_state(cfg)
    ones = {k: (np.ones_like(v) if k.endswith("layernorm.weight") or k == "model.norm.weight"
                else v) for k, v in state.items()}
    rotated = transform_residual(cfg, ones, random_orthogonal(cfg.hidden_size, 0))
    _assert_function_changed(cfg, state, rotated, ids, feats)


def test_rejects_bad_inputs():
    cfg = tiny_config()
    state = random_state(cfg)
    with pytest.raises(ValueError, match="orthogonal"):
        transform_residual(cfg, state, np.eye(cfg.hidden_size) * 2.0)
    with pytest.raises(ValueError, match="non-zero"):
        scale_qk(cfg, state, 0.0)
    with pytest.raises(ValueError, match="shape"):
        rotate_rope_pairs(cfg, state, np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match="unknown manipulation"):
        manipulate("transpose", cfg, state, 0)
    with pytest.raises(ValueError, match="residual role"):
        transform_residual(cfg, {**state, "model.extra.weight": np.ones((2, 2), np.float32)},
                           random_signed_permutation(cfg.hidden_size, 0))


def test_random_orthogonal_is_orthogonal_and_seeded():
    a, b = random_orthogonal(16, 3), random_orthogonal(16, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.T @ a, np.eye(16), rtol=0, atol=1e-12)
    assert np.abs(a - random_orthogonal(16, 4)).max() > 0.1


def test_qk_scale_recipes_isotropic_per_layer_vs_per_group():
    cfg = tiny_config()
    state = random_state(cfg)
    q0, k0 = _qk(cfg, state, layer=1)
    d = cfg.head_dim
    for kind, isotropic in (("qk-scale", True), ("qk-scale-groups", False)):
        q1, k1 = _qk(cfg, manipulate(kind, cfg, state, seed=3), layer=1)
        ratio = (k0 / k1)[::d, 0]  # one factor per key/value head
        np.testing.assert_allclose((q1 / q0)[:: 2 * d, 0], ratio, rtol=1e-5)
        assert (np.ptp(ratio) < 1e-5 * ratio.max()) == isotropic


@pytest.mark.parametrize("arch", ARCHS)
def test_quantisation_round_trip_changes_weights_by_rounding_only(arch, ids, feats):
    from awm_jax.zoo.manipulate import quantize_roundtrip

    cfg = tiny_config(arch)
    state = random_state(cfg, seed=5)
    out = manipulate("quant-int4", cfg, state, seed=0)
    q0, _ = _qk(cfg, state)
    q1, _ = _qk(cfg, out)
    groups = q0.reshape(q0.shape[0], -1, 32)
    step = np.abs(groups).max(-1, keepdims=True) / 7  # 4 bits: levels -7..7 of absmax / 7
    err = np.abs((q1 - q0).reshape(groups.shape))
    assert 0 < err.max() and np.all(err <= step / 2 + 1e-7), "round to nearest: at most half a step"
    again = quantize_roundtrip(out)
    assert all(np.allclose(again[k], out[k], rtol=0, atol=1e-6) for k in out), "a round trip is idempotent"
    fa = feats if cfg.architecture == "llava" else None
    la, lb = logits(cfg, state, ids, fa), logits(cfg, out, ids, fa)
    assert np.corrcoef(la.ravel(), lb.ravel())[0, 1] > 0.8, "close to the original function"
