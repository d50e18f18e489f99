"""Persimmon / Fuyu ("documented": transformers' ``PersimmonAttention._split_heads`` transcribed):
the fused ``query_key_value`` output viewed as ``[heads, 3, head_dim]`` gives Q, K and V."""

from __future__ import annotations

import numpy as np
import pytest

import awm_jax
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import detect
from awm_jax.synthetic import llama_config, write_model

VOCAB, HIDDEN, HEADS, LAYERS = 48, 64, 4, 2
HD = HIDDEN // HEADS


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    qkv = [[rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 8 for _ in range(3)] for _ in range(LAYERS)]
    return emb, qkv


def _fuse(q, k, v):
    """Rows as the module's output is viewed: ``fused.view(heads, 3, head_dim)``, so row
    ``h * 3 * hd + j * hd + d`` is part ``j`` (q, k, v) of head ``h``."""
    return np.stack([q.reshape(HEADS, HD, HIDDEN), k.reshape(HEADS, HD, HIDDEN), v.reshape(HEADS, HD, HIDDEN)],
                    axis=1).reshape(3 * HIDDEN, HIDDEN)


def _spec(name, a):
    return (name, a.shape, np.float32, lambda a=a: a)


def _persimmon_config():
    return {"architectures": ["PersimmonForCausalLM"], "model_type": "persimmon", "hidden_size": HIDDEN,
            "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "qk_layernorm": True,
            "intermediate_size": 4 * HIDDEN}


def write_persimmon(folder, prefix="model.", config=None, seed=0, extra=()):
    emb, qkv = _weights(seed)
    specs = [_spec(f"{prefix}embed_tokens.weight", emb), *extra]
    for i, (q, k, v) in enumerate(qkv):
        specs.append(_spec(f"{prefix}layers.{i}.self_attn.query_key_value.weight", _fuse(q, k, v)))
        specs.append(_spec(f"{prefix}layers.{i}.self_attn.q_layernorm.weight", np.ones(HD, np.float32)))
        specs.append(_spec(f"{prefix}layers.{i}.mlp.dense_h_to_4h.weight",
                           np.full((4 * HIDDEN, HIDDEN), 0.01, np.float32)))
    return write_model(folder, specs, config or _persimmon_config(), [f"t{i}" for i in range(VOCAB)])


def write_llama(folder, seed=0):
    emb, qkv = _weights(seed)
    specs = [_spec("model.embed_tokens.weight", emb)]
    for i, (q, k, _) in enumerate(qkv):
        specs += [_spec(f"model.layers.{i}.self_attn.q_proj.weight", q), _spec(f"model.layers.{i}.self_attn.k_proj.weight", k)]
    return write_model(folder, specs, llama_config(VOCAB, HIDDEN, LAYERS, HEADS, HEADS, HD), [f"t{i}" for i in range(VOCAB)])


def _fuyu_config():
    return {"architectures": ["FuyuForCausalLM"], "model_type": "fuyu", "text_config": _persimmon_config(),
            "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS}


@pytest.mark.parametrize("prefix, fuyu", [("model.", False), ("language_model.model.", True), ("model.language_model.", True)])
def test_query_and_key_rows_are_the_per_head_parts(tmp_path, prefix, fuyu):
    patches = (_spec("vision_embed_tokens.weight", np.ones((HIDDEN, 30), np.float32)),) if fuyu else ()
    folder = write_persimmon(tmp_path / "m", prefix, _fuyu_config() if fuyu else None, extra=patches)
    resolved = detect(Checkpoint(folder))
    assert resolved.name == "persimmon" and resolved.prefix == prefix and resolved.num_layers == LAYERS
    _, qkv = _weights()
    for i, (q, k, _) in enumerate(qkv):
        got_q, got_k = resolved.read_qk(i)
        np.testing.assert_array_equal(got_q, q)
        np.testing.assert_array_equal(got_k, k)
    (mlp,) = resolved.read_mlp(0)
    assert mlp.up.shape == (4 * HIDDEN, HIDDEN) and mlp.gate is None


def test_same_weights_in_the_llama_layout_score_one(tmp_path):
    result = awm_jax.compare(write_llama(tmp_path / "llama"), write_persimmon(tmp_path / "p"), cache=False, device="cpu")
    for value in (result.mean, result.wq, result.wk):
        assert abs(value - 1.0) <= 1e-5


def test_a_blocks_split_would_not_read_the_same_rows(tmp_path):
    """The interleaving matters: contiguous [Q | K | V] blocks of the same tensor are other matrices."""
    _, qkv = _weights()
    q, k, v = qkv[0]
    assert not np.array_equal(_fuse(q, k, v)[:HIDDEN], q)
