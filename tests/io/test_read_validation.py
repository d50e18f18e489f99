"""Only what is read is validated: a tensor of a dtype awm_jax does not know refuses the file only
when it is read; header-level sanity (extents, overlaps) still applies to every tensor."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import awm_jax
from awm_jax.errors import CheckpointError
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.synthetic import llama_config, write_model

VOCAB, HIDDEN = 32, 32


def _llama(folder, seed=0):
    rng = np.random.default_rng(seed)
    specs = [("model.embed_tokens.weight", (VOCAB, HIDDEN), np.float32,
              lambda: rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))]
    for i in range(2):
        for p in ("q_proj", "k_proj"):
            specs.append((f"model.layers.{i}.self_attn.{p}.weight", (HIDDEN, HIDDEN), np.float32,
                          lambda: rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32)))
    return write_model(folder, specs, llama_config(VOCAB, HIDDEN, 2, 2, 2, 16, dtype="float32"),
                       [f"t{i}" for i in range(VOCAB)])


def _add_tensor(path, name, dtype, shape, nbytes, rename=None):
    """Appends a tensor of any dtype name to a safetensors file (rewriting its header); ``rename``
    gives an existing tensor another dtype name instead."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    if rename is not None:
        header[rename]["dtype"] = dtype
    else:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + nbytes]}
        data += b"\x7f" * nbytes
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + data)


def test_an_unread_tensor_of_unknown_dtype_does_not_refuse_the_file(tmp_path):
    a = _llama(tmp_path / "a")
    b = _llama(tmp_path / "b")
    _add_tensor(b / "model.safetensors", "model.layers.0.mlp.experts.scales", "F8_E8M0", [4, 8], 32)
    _add_tensor(b / "model.safetensors", "odd.tensor", "F4", [3], 7)  # an odd size: not checked for unknown dtypes
    ckpt = Checkpoint(b)
    assert ckpt.info("model.layers.0.mlp.experts.scales").dtype == "F8_E8M0"
    result = awm_jax.compare(a, b, cache=False, device="cpu")
    assert result.mean == pytest.approx(1.0, abs=1e-6)


def test_a_read_tensor_of_unknown_dtype_is_refused_with_one_line(tmp_path):
    b = _llama(tmp_path / "b")
    _add_tensor(b / "model.safetensors", None, "F8_E8M0", None, 0, rename="model.layers.1.self_attn.q_proj.weight")
    with pytest.raises(CheckpointError, match=r"q_proj.weight' has unsupported dtype 'F8_E8M0'.*convert the checkpoint"):
        Checkpoint(b).read("model.layers.1.self_attn.q_proj.weight")
    with pytest.raises(CheckpointError, match="unsupported dtype 'F8_E8M0'"):
        awm_jax.compare(_llama(tmp_path / "a"), b, cache=False, device="cpu")


def test_header_sanity_still_covers_unknown_dtypes(tmp_path):
    b = _llama(tmp_path / "b")
    path = b / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    size = len(raw) - 8 - n
    header["beyond"] = {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [size, size + 4]}
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match="lies outside"):
        Checkpoint(b)
    header["beyond"] = {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}  # overlaps the embedding
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match="overlap"):
        Checkpoint(b)
    header["beyond"] = {"dtype": 7, "shape": [4], "data_offsets": [0, 4]}
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match="not a dtype name"):
        Checkpoint(b)
