"""Derivations on a tiny parent: shapes, what is kept, and exactness where it is expected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo import derive
from awm_jax.zoo.checkpoint import Checkpoint, expected_shapes, from_state_dict
from awm_jax.zoo.corpus import instruction_pairs, sample_documents
from awm_jax.zoo.data import text_lines
from awm_jax.zoo.model import ModelConfig
from awm_jax.zoo.tokenizer import train_bpe
from awm_jax.zoo.train import TrainConfig

from .zoo_helpers import logits, random_state

REL_ATOL = 1e-5
TC0 = TrainConfig(steps=0, batch_size=4, seq_len=32)
TC = TrainConfig(steps=3, batch_size=4, seq_len=32, learning_rate=1e-2)


@pytest.fixture(scope="module")
def docs():
    return sample_documents("python-stdlib", 60_000, seed=3, split="a")


@pytest.fixture(scope="module")
def parent(docs):
    tok = train_bpe(docs, 300)
    cfg = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, init_std=0.2)
    return Checkpoint(cfg, from_state_dict(random_state(cfg, 0)), tok)


@pytest.fixture
def ids():
    return np.random.default_rng(0).integers(3, 300, size=(2, 13)).astype(np.int32)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=REL_ATOL * np.abs(b).max())


def _shapes_ok(ckpt):
    assert {k: v.shape for k, v in ckpt.state_dict().items()} == expected_shapes(ckpt.cfg)


def test_moe_upcycling_starts_as_the_parent(parent, docs, ids):
    d = derive.upcycle_moe(parent, docs, TC0, num_experts=3, top_k=2, seed=1)
    assert d.checkpoint.cfg.architecture == "mixtral" and d.checkpoint.cfg.num_local_experts == 3
    _shapes_ok(d.checkpoint)
    _close(logits(d.checkpoint.cfg, d.checkpoint.state_dict(), ids),
           logits(parent.cfg, parent.state_dict(), ids))
    trained = derive.upcycle_moe(parent, docs, TC, num_experts=3, top_k=2, seed=1)
    s = trained.checkpoint.state_dict()
    e0 = s["model.layers.0.block_sparse_moe.experts.0.w1.weight"]
    e1 = s["model.layers.0.block_sparse_moe.experts.1.w1.weight"]
    assert np.abs(e0 - e1).max() > 0, "experts did not diverge during training"


def test_vocabulary_extension_keeps_old_rows(parent, docs, ids):
    donor = train_bpe(sample_documents("python-stdlib", 60_000, seed=9, split="b"), 500)
    d = derive.extend_vocabulary(parent, donor, 16, docs, TC0)
    ck = d.checkpoint
    assert d.info["added_tokens"] == 16 and ck.cfg.vocab_size == 316
    assert ck.tokenizer.get_vocab_size() == 316
    _shapes_ok(ck)
    s, p = ck.state_dict(), parent.state_dict()
    np.testing.assert_array_equal(s["model.embed_tokens.weight"][:300], p["model.embed_tokens.weight"])
    _close(logits(ck.cfg, s, ids)[..., :300], logits(parent.cfg, p, ids))


def test_multimodal_extension(parent, ids):
    lines = text_lines("python-stdlib:a", 40, seed=0)
    assert len(lines) == 40
    d = derive.add_multimodal(parent, lines, dataclasses.replace(TC0, seq_len=16),
                              projector_steps=2, num_patches=6, seed=0)
    ck = d.checkpoint
    assert ck.cfg.architecture == "llava" and ck.image_token_id == 300
    assert ck.tokenizer.token_to_id("<image>") == 300
    _shapes_ok(ck)
    s = ck.state_dict()
    assert all(k.startswith(("language_model.", "multi_modal_projector.")) for k in s)
    lm = {k[len("language_model."):]: v for k, v in s.items() if k.startswith("language_model.")}
    # Stage 1 trains only the projector; stage 2 had 0 steps: the language model is the parent.
    for k, v in parent.state_dict().items():
        np.testing.assert_array_equal(lm[k][: v.shape[0]], v)
    assert d.info["projector_train"]["steps"] == 2


def test_depth_pruning_keeps_whole_layers(parent, docs):
    d = derive.prune_depth(parent, docs, docs, TC0, num_layers=2)
    kept = d.info["kept_layers"]
    assert len(kept) == 2 and kept == sorted(kept) and d.checkpoint.cfg.num_hidden_layers == 2
    s, p = d.checkpoint.state_dict(), parent.state_dict()
    for j, i in enumerate(kept):
        np.testing.assert_array_equal(s[f"model.layers.{j}.self_attn.q_proj.weight"],
                                      p[f"model.layers.{i}.self_attn.q_proj.weight"])
    assert len(d.info["block_influence"]) == 3


def test_width_pruning_selects_channels_and_heads(parent, docs):
    d = derive.prune_width(parent, docs, docs, TC0, hidden_size=24, num_kv_groups=1,
                           intermediate_size=40)
    ck = d.checkpoint
    assert (ck.cfg.hidden_size, ck.cfg.num_key_value_heads, ck.cfg.num_attention_heads,
            ck.cfg.intermediate_size) == (24, 1, 2, 40)
    _shapes_ok(ck)
    keep = np.array(d.info["kept_hidden"])
    assert len(keep) == 24 and np.all(np.diff(keep) > 0)
    s, p = ck.state_dict(), parent.state_dict()
    np.testing.assert_array_equal(s["model.embed_tokens.weight"], p["model.embed_tokens.weight"][:, keep])
    g = d.info["kept_kv_groups"][0][0]
    np.testing.assert_array_equal(s["model.layers.0.self_attn.k_proj.weight"],
                                  p["model.layers.0.self_attn.k_proj.weight"][g * 8:(g + 1) * 8][:, keep])
    with pytest.raises(ValueError, match="no larger"):
        derive.prune_width(parent, docs, docs, TC0, 64, 1, 40)


@pytest.mark.slow
def test_sft_then_dpo_train(parent):
    """Training runs of SFT and DPO (SFT alone is also covered by the micro zoo)."""
    pairs = instruction_pairs(30, seed=0, split="a")
    tc = dataclasses.replace(TC, seq_len=96)
    sft = derive.supervised_finetune(parent, pairs, tc)
    assert sft.info["train"]["steps"] == 3 and sft.info["examples"] > 0
    q0 = parent.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    q1 = sft.checkpoint.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert np.abs(q1 - q0).max() > 0
    dpo = derive.preference_tune(sft.checkpoint, instruction_pairs(8, seed=1, split="b"),
                                 dataclasses.replace(tc, steps=2), max_new=6)
    assert dpo.info["pairs"] > 0 and 0.0 <= dpo.info["preference_accuracy"] <= 1.0
    _shapes_ok(dpo.checkpoint)


def test_sampling_is_seeded(parent):
    prompts = [[5, 6, 7], [8, 9]]
    a = derive.sample_continuations(parent.cfg, parent.params, prompts, 5, seed=0, batch_size=4)
    b = derive.sample_continuations(parent.cfg, parent.params, prompts, 5, seed=0, batch_size=4)
    assert a == b and len(a) == 2 and all(1 <= len(x) <= 5 for x in a)


@pytest.mark.slow
def test_distillation_student_is_fresh(parent, docs):
    student = parent.cfg.replace(hidden_size=16, head_dim=4, intermediate_size=24, num_hidden_layers=2)
    d = derive.distill(parent, student, seed=4, docs=docs, tc=TC)
    assert d.checkpoint.cfg == student and d.info["train"]["steps"] == 3
    _shapes_ok(d.checkpoint)
    assert d.checkpoint.tokenizer is parent.tokenizer
