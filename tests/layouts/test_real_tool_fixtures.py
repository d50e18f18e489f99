"""Checkpoints written by the formats' own tools, read by awm_jax.

The files under ``tests/fixtures/real_tools/`` are committed; each is written by a generator
script beside it that runs the format's own software (``gguf``'s quantiser, ``peft``...), so
these tests need none of those tools. Scores are measured against the parity models
(``../shared/parity``): the float parent ``llama_a`` and the independently trained ``llama_b``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import awm_jax
from awm_jax.io.checkpoint import Checkpoint

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real_tools"
GGUF_TYPES = json.loads((REAL / "gguf" / "MANIFEST.json").read_text())["files"]
FLOORS = {"Q8_0": 0.99, "Q5_1": 0.95, "Q5_0": 0.95, "Q4_1": 0.95, "Q4_0": 0.95, "MXFP4": 0.95}


def _compare(a, b):
    return awm_jax.compare(a, b, cache=False, device="cpu")


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``LlamaModel.permute`` (rotate-half rows back to interleaved pairs)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- GGUF written by gguf.quants.quantize -----------------------------------------------------

def test_every_gguf_type_has_a_floor():
    assert {entry["type"] for entry in GGUF_TYPES.values()} == set(FLOORS)


@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_gguf_tensors_are_the_parent_within_the_types_error(parity, name):
    gguf = pytest.importorskip("gguf")
    from awm_jax.io.gguf import GGUFCheckpoint, find_gguf

    qtype = GGUF_TYPES[name]["type"]
    ckpt = GGUFCheckpoint(find_gguf(REAL / "gguf" / name))
    ref = Checkpoint(parity / "llama_a")
    heads = {"q_proj": ref.config["num_attention_heads"], "k_proj": ref.config["num_key_value_heads"]}
    reader = gguf.GGUFReader(REAL / "gguf" / name)
    raw = {t.name: t for t in reader.tensors}
    for hf, gname in (("model.embed_tokens.weight", "token_embd.weight"),
                      ("model.layers.2.self_attn.q_proj.weight", "blk.2.attn_q.weight"),
                      ("model.layers.3.self_attn.k_proj.weight", "blk.3.attn_k.weight")):
        assert ckpt.types[hf] == qtype
        got = ckpt.read(hf)
        want = np.asarray(ref.read(hf), np.float32)
        assert got.shape == want.shape and got.dtype == np.float32
        # exactly the package's own dequantisation of the stored blocks
        np.testing.assert_array_equal(got, gguf.quants.dequantize(raw[gname].data, raw[gname].tensor_type))
        module = hf.split(".")[-2]
        if module in heads:
            got = _unpermute(got, heads[module])
        # per-row relative error of a 4-bit block format stays under ~20%, 8-bit under 1%
        err = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
        assert err.max() < (0.01 if qtype == "Q8_0" else 0.2), (qtype, hf, err.max())


@pytest.mark.parametrize("name", sorted(GGUF_TYPES))
def test_gguf_scores_as_its_float_parent_and_not_as_an_independent_model(parity, name):
    pytest.importorskip("gguf")
    path = REAL / "gguf" / name
    parent = _compare(parity / "llama_a", path)
    assert parent.mean >= FLOORS[GGUF_TYPES[name]["type"]] and parent.verdict == "derived", parent.mean
    independent = _compare(parity / "llama_b", path)
    assert independent.verdict != "derived", independent.mean
