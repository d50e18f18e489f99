"""Hugging Face export: names, shapes, config.json, round trips, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from . import require_zoo_extra

require_zoo_extra()

from safetensors.numpy import load_file

from awm_jax.zoo.checkpoint import (
    CHECKPOINT_FILES,
    Checkpoint,
    atomic_directory,
    config_from_hf,
    expected_shapes,
    from_state_dict,
    hf_config,
    save_checkpoint,
)
from awm_jax.zoo.tokenizer import train_bpe

from .zoo_helpers import ARCHS, random_state, tiny_config

REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta")


@pytest.fixture(scope="module")
def tok():
    docs = ["def f(x):\n    return x + 1\n" * 20, "The quick brown fox jumps.\n" * 20]
    return train_bpe(docs, 300, min_frequency=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_json_is_a_valid_hf_config(arch):
    cfg = tiny_config(arch)
    c = hf_config(cfg, "bfloat16", image_token_id=96 if arch == "llava" else None)
    want_arch = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
                 "llava": "LlavaForConditionalGeneration"}[arch]
    assert c["architectures"] == [want_arch]
    text = c["text_config"] if arch == "llava" else c
    for key in REQUIRED:
        assert key in text, key
    assert text["tie_word_embeddings"] is False and c["tie_word_embeddings"] is False
    assert text["hidden_size"] == 32 and text["head_dim"] == 8 and text["num_key_value_heads"] == 2
    if arch == "mixtral":
        assert c["model_type"] == "mixtral" and c["num_local_experts"] == 3
    if arch == "llava":
        assert c["model_type"] == "llava" and c["image_token_id"] == 96
        assert c["vision_config"]["hidden_size"] == cfg.vision_feature_size
    assert config_from_hf(json.loads(json.dumps(c))) == cfg


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_load_round_trip(tmp_path, tok, arch, dtype):
    cfg = tiny_config(arch, vocab_size=tok.get_vocab_size())
    state = random_state(cfg)
    ckpt = Checkpoint(cfg, from_state_dict(state), tok, 299 if arch == "llava" else None)
    path = ckpt.save(tmp_path / "m", dtype=dtype)
    assert sorted(p.name for p in path.iterdir()) == sorted(CHECKPOINT_FILES)
    raw = load_file(str(path / "model.safetensors"))
    assert {k: v.shape for k, v in raw.items()} == expected_shapes(cfg)
    assert all(str(v.dtype) == dtype for v in raw.values())
    back = Checkpoint.load(path)
    assert back.cfg == cfg and back.image_token_id == ckpt.image_token_id
    assert back.tokenizer.get_vocab() == tok.get_vocab()
    tol = 0.0 if dtype == "float32" else 2.0**-8
    for k, v in back.state_dict().items():
        np.testing.assert_allclose(v, state[k], rtol=tol, atol=1e-30)
    cfg_json = json.loads((path / "config.json").read_text())
    assert cfg_json.get("dtype") == dtype


def test_save_rejects_wrong_shapes(tmp_path, tok):
    cfg = tiny_config(vocab_size=tok.get_vocab_size())
    state = random_state(cfg)
    state["model.layers.0.self_attn.k_proj.weight"] = state["model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(ValueError, match="wrong shapes"):
        save_checkpoint(tmp_path / "bad", cfg, state, tok)
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match="missing"):
        save_checkpoint(tmp_path / "bad", cfg, state, tok)
    assert not (tmp_path / "bad").exists()


def test_atomic_directory_keeps_old_folder_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("replaced")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_load_missing_folder_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m awm_jax.zoo build"):
        Checkpoint.load(tmp_path / "nothing")
