"""LoRA / PEFT adapters: compared as their base with ``scale * B A`` merged, exactly as the
explicitly merged float model (PEFT's ``merge_and_unload``, written out here from its formula)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import awm_jax
from awm_jax.errors import CheckpointError
from awm_jax.io.adapters import adapter_base
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.synthetic import write_safetensors

TARGETS = ("q_proj", "k_proj", "gate_proj", "up_proj")




def write_adapter(base: Path, folder: Path, r: int = 4, alpha: float = 8.0, rslora: bool = False, seed: int = 0,
                  base_name: str | None = None, embedding: bool = False, alpha_pattern: dict | None = None):
    """A PEFT LoRA adapter over ``base`` and the explicitly merged weights: ``{name: merged}``."""
    rng = np.random.default_rng(seed)
    ckpt = Checkpoint(base)
    specs, merged = [], {}
    for name in ckpt.tensors:
        module = name[: -len(".weight")]
        kind = module.rsplit(".", 1)[-1]
        w = np.asarray(ckpt.read(name), np.float32)
        if kind in TARGETS:
            a = (rng.standard_normal((r, w.shape[1])) * 0.05).astype(np.float32)
            b = (rng.standard_normal((w.shape[0], r)) * 0.05).astype(np.float32)
            a_ = (alpha_pattern or {}).get(kind, alpha)
            scale = a_ / (math.sqrt(r) if rslora else r)
            merged[name] = w + scale * (b.astype(np.float64) @ a)
            specs += [(f"base_model.model.{module}.lora_A.weight", a.shape, np.float32, lambda a=a: a),
                      (f"base_model.model.{module}.lora_B.weight", b.shape, np.float32, lambda b=b: b)]
        elif embedding and kind == "embed_tokens":
            a = (rng.standard_normal((r, w.shape[0])) * 0.05).astype(np.float32)
            b = (rng.standard_normal((w.shape[1], r)) * 0.05).astype(np.float32)
            merged[name] = w + alpha / r * (b.astype(np.float64) @ a).T
            specs += [(f"base_model.model.{module}.lora_embedding_A", a.shape, np.float32, lambda a=a: a),
                      (f"base_model.model.{module}.lora_embedding_B", b.shape, np.float32, lambda b=b: b)]
    folder.mkdir(parents=True)
    write_safetensors(folder / "adapter_model.safetensors", specs)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "fan_in_fan_out": False,
              "target_modules": list(TARGETS), "base_model_name_or_path": base_name or str(base),
              "alpha_pattern": alpha_pattern or {}, "rank_pattern": {}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return merged


def write_merged(base: Path, folder: Path, merged: dict) -> Path:
    ckpt = Checkpoint(base)
    specs = []
    for name in ckpt.tensors:
        arr = merged.get(name, np.asarray(ckpt.read(name), np.float32)).astype(np.float32)
        specs.append((name, arr.shape, np.float32, lambda arr=arr: arr))
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", specs)
    shutil.copy(base / "config.json", folder / "config.json")
    shutil.copy(base / "tokenizer.json", folder / "tokenizer.json")
    return folder


def _compare(a, b, **kwargs):
    return awm_jax.compare(a, b, cache=False, device="cpu", **kwargs)


@pytest.mark.parametrize("rslora, embedding", [(False, False), (True, False), (False, True)])
def test_adapter_scores_as_the_explicitly_merged_model(parity, tmp_path, rslora, embedding):
    merged = write_adapter(parity / "llama_a", tmp_path / "adapter", rslora=rslora, embedding=embedding,
                           alpha=16.0 if embedding else 8.0)
    full = write_merged(parity / "llama_a", tmp_path / "merged", merged)
    for other in ("llama_a", "llama_a_ft", "llama_b"):
        via_adapter = _compare(parity / other, tmp_path / "adapter", mlp=True)
        explicit = _compare(parity / other, full, mlp=True)
        for what in ("mean", "wq", "wk", "mlp"):
            assert abs(getattr(via_adapter, what) - getattr(explicit, what)) <= 1e-6, (other, what)
        # The report says a merged adapter was scored (text and JSON), and the float model is plain.
        assert via_adapter.model_b.form.startswith("LoRA adapter") and "merged into" in via_adapter.model_b.form
        assert "read as LoRA adapter" in via_adapter.render_text()
        assert via_adapter.to_dict()["model_b"]["form"] == via_adapter.model_b.form
        assert explicit.model_b.form == "safetensors" and "read as" not in explicit.render_text()
    assert _compare(parity / "llama_a", tmp_path / "adapter").mean < 1 - 1e-4  # the delta is really applied


def test_merged_weights_equal_the_formula(parity, tmp_path):
    from awm_jax.engine.models import open_checkpoint

    merged = write_adapter(parity / "llama_a", tmp_path / "adapter", alpha_pattern={"k_proj": 2.0})
    ckpt = open_checkpoint(tmp_path / "adapter")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.2.self_attn.k_proj.weight"):
        np.testing.assert_allclose(ckpt.read(name), merged[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ckpt.read(name, slice(3, 9)), merged[name][3:9], rtol=0, atol=1e-6)
    assert ckpt.info("model.layers.0.self_attn.q_proj.weight").dtype == "F32"
    assert ckpt.config["adapter"]["r"] == 4


def test_base_comes_from_the_config_relative_path_or_the_override(parity, tmp_path):
    shutil.copytree(parity / "llama_a", tmp_path / "base")
    write_adapter(tmp_path / "base", tmp_path / "adapter", base_name="../base")
    assert _compare(tmp_path / "base", tmp_path / "adapter").mean > 0.5
    write_adapter(parity / "llama_a", tmp_path / "orphan", base_name="/nonexistent/base-model")
    with pytest.raises(CheckpointError, match="no such file"):
        _compare(parity / "llama_a", tmp_path / "orphan")
    with adapter_base(parity / "llama_a"):
        assert _compare(parity / "llama_a", tmp_path / "orphan").mean > 0.5


def test_adapter_for_another_base_is_refused(parity, tmp_path):
    write_adapter(parity / "llama_a", tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(parity / "llama_a_width96")
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="belongs to another base model"):
        _compare(parity / "llama_a", tmp_path / "adapter")


@pytest.mark.parametrize("edit, match", [({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "not LoRA"),
                                         ({"r": 8}, "do not fit its lora_A of rank 4")])
def test_unsupported_adapters_are_refused_by_name(parity, tmp_path, edit, match):
    write_adapter(parity / "llama_a", tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg.update(edit)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        _compare(parity / "llama_a", tmp_path / "adapter")


def test_the_checkpoint_says_it_is_a_merged_adapter(parity, tmp_path):
    from awm_jax.engine.models import open_checkpoint

    write_adapter(parity / "llama_a", tmp_path / "adapter", r=8)
    assert open_checkpoint(tmp_path / "adapter").form == (
        f"LoRA adapter (16 weights, rank 8) merged into {(parity / 'llama_a').resolve()}")
