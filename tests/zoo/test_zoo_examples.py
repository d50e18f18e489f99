"""The shipped example checkpoints: present, small, loadable, labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from . import require_zoo_extra

require_zoo_extra()

from safetensors.numpy import load_file

from awm_jax.zoo.checkpoint import CHECKPOINT_FILES, Checkpoint, expected_shapes

EXAMPLES = Path(__file__).resolve().parents[2] / "awm_jax" / "examples"
NAMES = ("base", "derived", "independent")
MAX_BYTES = 3 * 2**20


@pytest.fixture(scope="module")
def manifest():
    path = EXAMPLES / "MANIFEST.json"
    if not path.is_file():
        pytest.skip("no shipped examples; write them with 'python -m awm_jax.zoo examples'")
    return json.loads(path.read_text())


def test_examples_are_small_bf16_checkpoints(manifest):
    total = 0
    for name in NAMES:
        folder = EXAMPLES / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
        total += sum(p.stat().st_size for p in folder.iterdir())
        raw = load_file(str(folder / "model.safetensors"))
        assert {str(v.dtype) for v in raw.values()} == {"bfloat16"}
        ckpt = Checkpoint.load(folder)
        assert {k: v.shape for k, v in raw.items()} == expected_shapes(ckpt.cfg)
        assert ckpt.tokenizer.get_vocab_size() == ckpt.cfg.vocab_size
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
    assert total <= MAX_BYTES


def test_examples_lineage(manifest):
    labels = {(p["a"], p["b"]): p["label"] for p in manifest["pairs"]}
    assert labels[("base", "derived")] == "derived"
    assert labels[("base", "independent")] == "independent"
    assert labels[("derived", "independent")] == "independent"
    rec = {r["name"]: r for r in manifest["models"]}
    assert rec["derived"]["parent"] == "base" and rec["derived"]["kind"] in ("sft", "cpt")
    assert rec["independent"]["seed"] != rec["base"]["seed"]
    # Derived from base: same shapes, different (trained) weights.
    a = Checkpoint.load(EXAMPLES / "base").state_dict()
    b = Checkpoint.load(EXAMPLES / "derived").state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert a[q].shape == b[q].shape and np.abs(a[q] - b[q]).max() > 0
