"""The flax decoders against a float64 numpy reference written from the Llama/Mixtral formulas."""

from __future__ import annotations

import numpy as np
import pytest

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo.checkpoint import expected_shapes, to_state_dict
from awm_jax.zoo.model import ModelConfig, init_params, num_parameters

from .zoo_helpers import ARCHS, logits, random_state, tiny_config


def _rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _rope(x, theta):
    # x [T, heads, d]; Hugging Face rotate_half convention.
    t, _, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def _silu(x):
    return x / (1.0 + np.exp(-x))


def reference_logits(cfg: ModelConfig, s: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Float64 forward of one sequence ``ids [T]`` -> ``[T, V]``."""
    s = {k: v.astype(np.float64) for k, v in s.items()}
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = s["model.embed_tokens.weight"][ids]
    t = len(ids)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = _rms(x, s[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = _rope((a @ s[p + "self_attn.q_proj.weight"].T).reshape(t, h, d), cfg.rope_theta)
        k = _rope((a @ s[p + "self_attn.k_proj.weight"].T).reshape(t, kv, d), cfg.rope_theta)
        v = (a @ s[p + "self_attn.v_proj.weight"].T).reshape(t, kv, d)
        out = np.zeros((t, h, d))
        for head in range(h):
            g = head // (h // kv)
            sc = q[:, head] @ k[:, g].T / np.sqrt(d)
            sc = np.where(np.tril(np.ones((t, t))) > 0, sc, -np.inf)
            w = np.exp(sc - sc.max(-1, keepdims=True))
            out[:, head] = (w / w.sum(-1, keepdims=True)) @ v[:, g]
        x = x + out.reshape(t, h * d) @ s[p + "self_attn.o_proj.weight"].T
        m = _rms(x, s[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        if cfg.architecture == "mixtral":
            r = m @ s[p + "block_sparse_moe.gate.weight"].T
            pr = np.exp(r - r.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            y = np.zeros_like(x)
            for tok in range(t):
                top = np.argsort(-pr[tok])[: cfg.num_experts_per_tok]
                wts = pr[tok, top] / pr[tok, top].sum()
                for e, w_e in zip(top, wts):
                    ep = p + f"block_sparse_moe.experts.{e}."
                    z = _silu(m[tok] @ s[ep + "w1.weight"].T) * (m[tok] @ s[ep + "w3.weight"].T)
                    y[tok] += w_e * (z @ s[ep + "w2.weight"].T)
            x = x + y
        else:
            z = _silu(m @ s[p + "mlp.gate_proj.weight"].T) * (m @ s[p + "mlp.up_proj.weight"].T)
            x = x + z @ s[p + "mlp.down_proj.weight"].T
    x = _rms(x, s["model.norm.weight"], cfg.rms_norm_eps)
    return x @ s["lm_head.weight"].T


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_forward_matches_float64_reference(arch, ids):
    cfg = tiny_config(arch)
    state = random_state(cfg, seed=3)
    got = logits(cfg, state, ids)
    assert got.shape == (2, 11, cfg.vocab_size)
    for b in range(2):
        want = reference_logits(cfg, state, ids[b])
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_names_and_shapes_are_hugging_face(arch):
    cfg = tiny_config(arch)
    params = init_params(cfg, 0)
    state = to_state_dict(params)
    assert {k: v.shape for k, v in state.items()} == expected_shapes(cfg)
    assert num_parameters(params) == sum(int(np.prod(s)) for s in expected_shapes(cfg).values())
    pre = "language_model." if arch == "llava" else ""
    assert state[f"{pre}model.layers.1.self_attn.q_proj.weight"].shape == (4 * 8, 32)
    assert state[f"{pre}model.layers.1.self_attn.k_proj.weight"].shape == (2 * 8, 32)
    assert state[f"{pre}model.layers.0.self_attn.o_proj.weight"].shape == (32, 4 * 8)
    assert f"{pre}lm_head.weight" in state and f"{pre}model.embed_tokens.weight" in state


def test_llava_text_logits_and_feature_prefix(ids, feats):
    cfg = tiny_config("llava")
    state = random_state(cfg)
    text_only = logits(cfg, state, ids)
    with_image = logits(cfg, state, ids, feats)
    assert with_image.shape == text_only.shape == (2, 11, cfg.vocab_size)
    # The image prefix changes what the text positions see.
    assert np.abs(with_image - text_only).max() > 1e-3
    # Without features the LLaVA model is its language model.
    lm_cfg = cfg.replace(architecture="llama", vision_feature_size=0)
    lm_state = {k[len("language_model."):]: v for k, v in state.items()
                if k.startswith("language_model.")}
    np.testing.assert_allclose(text_only, logits(lm_cfg, lm_state, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_causality(arch, ids):
    cfg = tiny_config(arch)
    state = random_state(cfg)
    changed = ids.copy()
    changed[:, 7:] = (changed[:, 7:] + 1) % cfg.vocab_size
    a, b = logits(cfg, state, ids), logits(cfg, state, changed)
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=0, atol=1e-5)
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-4


def test_config_validation():
    with pytest.raises(ValueError, match="multiple"):
        tiny_config(num_key_value_heads=3)
    with pytest.raises(ValueError, match="even"):
        tiny_config(head_dim=7)
    with pytest.raises(ValueError, match="mixtral"):
        tiny_config("mixtral", num_local_experts=1, num_experts_per_tok=2)
