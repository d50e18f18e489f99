"""awm_jax.engine.models.needed_tensors: the tensors a comparison reads, named without reading them."""

from __future__ import annotations

import numpy as np
import pytest

from awm_jax.engine.models import needed_tensors
from awm_jax.fingerprint.grams import layer_matrices
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import detect
from hub_server import write_llama_model


def _traced_everything(resolved, mlp, norm_gains) -> set[str]:
    """The reference: every layer traced, and the embedding."""
    with resolved.ckpt.tracing() as names:
        resolved.read_embedding()
        for layer in range(resolved.num_layers):
            layer_matrices(resolved, layer, "qk", norm_gains)
            if mlp:
                layer_matrices(resolved, layer, "mlp", norm_gains)
    return names


@pytest.mark.parametrize("mlp", [False, True])
@pytest.mark.parametrize("norm_gains", ["fold", "ignore"])
def test_needed_tensors_are_those_every_layer_reads(tmp_path, mlp, norm_gains):
    folder = write_llama_model(tmp_path / "m", layers=5, shard_bytes=None)
    resolved = detect(Checkpoint(folder), None)
    names = needed_tensors(resolved, mlp, norm_gains)
    assert names == _traced_everything(resolved, mlp, norm_gains)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert any("gate_proj" in n for n in names) == mlp
    assert any("input_layernorm" in n for n in names) == (norm_gains == "fold")
    assert not any("v_proj" in n or "o_proj" in n or "down_proj" in n for n in names)


def test_tracing_reads_no_byte_and_ends_with_its_block(tmp_path):
    folder = write_llama_model(tmp_path / "m", layers=2, shard_bytes=None)
    ckpt = Checkpoint(folder)
    with ckpt.tracing() as names:
        assert not ckpt.read("model.layers.1.self_attn.q_proj.weight").any()  # zeros: no byte read
        assert not ckpt.map("model.embed_tokens.weight").any()
    assert names == {"model.layers.1.self_attn.q_proj.weight", "model.embed_tokens.weight"}
    assert ckpt.read("model.layers.1.self_attn.q_proj.weight").any()  # outside the block: the real bytes
    np.testing.assert_array_equal(ckpt.map("model.embed_tokens.weight"), ckpt.read("model.embed_tokens.weight"))
