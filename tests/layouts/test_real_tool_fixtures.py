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


# --- K-quant GGUF written by llama.cpp's own quantiser (llama_model_quantize) -------------------

LLAMA_CPP = REAL / "llama_cpp"
LLAMA_CPP_TYPES = json.loads((LLAMA_CPP / "MANIFEST.json").read_text())["files"]
K_FLOORS = {"Q6_K": 0.99, "Q5_K_M": 0.99, "Q4_K_M": 0.95, "Q2_K": 0.85}


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_TYPES))
def test_llama_cpp_k_quants_score_as_their_float_parent_and_not_as_an_independent_model(name):
    """Real K-quant files (llama.cpp chose the per-tensor mix: Q4_K with Q6_K for Q4_K_M...) of a
    256-wide model, dequantised by the ``gguf`` package, against the bf16 parent and an
    independent model of the same shapes (no ../shared needed)."""
    gguf = pytest.importorskip("gguf")
    qtype = LLAMA_CPP_TYPES[name]["type"]
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(LLAMA_CPP / name).tensors}
    assert kinds & {"Q2_K", "Q4_K", "Q5_K", "Q6_K"} and kinds == set(LLAMA_CPP_TYPES[name]["tensor_types"])
    parent = _compare(LLAMA_CPP / "base", LLAMA_CPP / name)
    assert parent.mean >= K_FLOORS[qtype] and parent.verdict == "derived", (qtype, parent.mean)
    independent = _compare(LLAMA_CPP / "other", LLAMA_CPP / name)
    assert independent.verdict != "derived", independent.mean


# --- LoRA adapters written by peft, against peft's own merge_and_unload() ----------------------

PEFT = REAL / "peft"
PEFT_MANIFEST = json.loads((PEFT / "MANIFEST.json").read_text())["variants"]
PEFT_VARIANTS = sorted(PEFT_MANIFEST)
# every adapter against its base and against every merged model over the same base
PEFT_PAIRS = [(variant, other) for variant in PEFT_VARIANTS
              for other in [PEFT_MANIFEST[variant]["base"]] + [f"{v}/merged" for v in PEFT_VARIANTS
                                                                if PEFT_MANIFEST[v]["base"] == PEFT_MANIFEST[variant]["base"]]]


def _open_adapter(folder: Path):
    from awm_jax.io.adapters import open_adapter

    return open_adapter(folder, lambda spec: Checkpoint(Path(spec)))


@pytest.mark.parametrize("variant", PEFT_VARIANTS)
def test_adapter_weights_equal_peft_merge_and_unload(variant):
    adapter = _open_adapter(PEFT / variant / "adapter")
    merged, base = Checkpoint(PEFT / variant / "merged"), Checkpoint(PEFT / PEFT_MANIFEST[variant]["base"])
    changed = {name for name in merged.tensors
               if not np.array_equal(np.asarray(merged.read(name)), np.asarray(base.read(name)))}
    assert changed and changed == set(adapter.deltas)
    for name in merged.tensors:
        np.testing.assert_allclose(adapter.read(name), np.asarray(merged.read(name), np.float32), rtol=0, atol=1e-6,
                                   err_msg=name)


def test_rslora_scales_follow_rank_and_alpha_patterns():
    deltas = _open_adapter(PEFT / "rslora" / "adapter").deltas
    # use_rslora: alpha / sqrt(r); alpha_pattern q_proj 32, rank_pattern k_proj 4, else r 8, alpha 16
    assert deltas["model.layers.1.self_attn.q_proj.weight"].scale == pytest.approx(32 / 8 ** 0.5)
    assert deltas["model.layers.1.self_attn.k_proj.weight"].scale == pytest.approx(16 / 4 ** 0.5)
    assert deltas["model.layers.0.mlp.gate_proj.weight"].scale == pytest.approx(16 / 8 ** 0.5)
    assert deltas["model.embed_tokens.weight"].transposed


def test_fan_in_fan_out_deltas_are_transposed():
    deltas = _open_adapter(PEFT / "gpt2_fan_in_fan_out" / "adapter").deltas
    assert deltas["transformer.h.0.attn.c_attn.weight"].transposed
    assert deltas["transformer.h.1.mlp.c_fc.weight"].scale == pytest.approx(8 / 4)


@pytest.mark.parametrize("variant,other", PEFT_PAIRS)
def test_adapter_comparison_equals_the_merged_models(variant, other):
    kwargs = dict(cache=False, device="cpu", mlp=True)
    via_adapter = awm_jax.compare(PEFT / variant / "adapter", PEFT / other, **kwargs)
    via_merged = awm_jax.compare(PEFT / variant / "merged", PEFT / other, **kwargs)
    assert "LoRA adapter" in via_adapter.model_a.form
    for field in ("mean", "wq", "wk", "mlp"):
        assert abs(getattr(via_adapter, field) - getattr(via_merged, field)) <= 1e-6, field
    assert via_adapter.verdict == via_merged.verdict


def test_saved_base_layer_replaces_the_base_weight_and_takes_the_delta(tmp_path):
    """``M.base_layer.weight`` in the adapter (PEFT's ``save_embedding_layers``) is the weight the delta is added to."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    config = json.loads((PEFT / "rslora" / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(PEFT / "base")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(PEFT / "rslora" / "adapter" / "adapter_model.safetensors")
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    tensors[key] = tensors[key] * 2
    save_file(tensors, folder / "adapter_model.safetensors")
    name = "model.embed_tokens.weight"
    original = _open_adapter(PEFT / "rslora" / "adapter").read(name)
    base = np.asarray(Checkpoint(PEFT / "base").read(name), np.float32)
    np.testing.assert_allclose(_open_adapter(folder).read(name), original + base, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_open_adapter(folder).read(name, slice(10, 20)), (original + base)[10:20], rtol=0, atol=1e-6)


# --- integer-quantised safetensors written by the quantisers themselves ------------------------

def _quantised(tool: str) -> list[tuple[str, str]]:
    manifest = REAL / tool / "MANIFEST.json"
    return [(tool, variant) for variant in sorted(json.loads(manifest.read_text())["variants"])] if manifest.exists() else []


QUANTISED = _quantised("bnb") + _quantised("compressed_tensors") + _quantised("awq") + _quantised("gptq")
QUANT_FLOORS = {"int8": 0.99, "fp8": 0.99, "nf4": 0.93, "nf4_double": 0.93, "fp4": 0.90}


@pytest.mark.parametrize("tool,variant", QUANTISED)
def test_quantised_weights_equal_the_tools_own_dequantisation(tool, variant):
    from safetensors.numpy import load_file

    from awm_jax.layouts import WeightReader

    reader = WeightReader(Checkpoint(REAL / tool / variant))
    reference = load_file(REAL / tool / f"{variant}.reference.safetensors")
    assert reference
    for name, want in reference.items():
        np.testing.assert_allclose(reader.matrix(name), want.astype(np.float32), rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.parametrize("tool,variant", QUANTISED)
def test_quantised_scores_as_its_float_parent_and_not_as_an_independent_model(parity, tool, variant):
    path = REAL / tool / variant
    parent = _compare(parity / "llama_a", path)
    assert parent.mean >= QUANT_FLOORS.get(variant, 0.95) and parent.verdict == "derived", parent.mean
    independent = _compare(parity / "llama_b", path)
    assert independent.verdict != "derived", independent.mean


# --- damaged copies of the tools' files: one line and the documented exit code -----------------

def _damaged_copies(tmp_path: Path) -> list[tuple[str, Path, int]]:
    """Each tool's file truncated (exit 3) and each quantised file without a side tensor (exit 4)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    cases = []
    gguf_copy = tmp_path / "q4_0.gguf"
    gguf_copy.write_bytes((REAL / "gguf" / "llama_a-Q4_0.gguf").read_bytes()[:-1000])
    cases.append(("gguf truncated", gguf_copy, 3))
    drop = {"bnb/nf4": "model.layers.0.self_attn.q_proj.weight.absmax",
            "compressed_tensors/int4_g32": "model.layers.0.self_attn.q_proj.weight_scale",
            "awq/gemm_g128": "model.layers.0.self_attn.q_proj.qzeros",
            "gptq/g128": "model.layers.0.self_attn.q_proj.scales"}
    for fixture, side in drop.items():
        truncated = tmp_path / fixture.replace("/", "_") / "truncated"
        shutil.copytree(REAL / fixture, truncated)
        raw = (truncated / "model.safetensors").read_bytes()
        (truncated / "model.safetensors").write_bytes(raw[:-5000])
        cases.append((f"{fixture} truncated", truncated, 3))
        missing = tmp_path / fixture.replace("/", "_") / "missing"
        shutil.copytree(REAL / fixture, missing)
        tensors = load_file(missing / "model.safetensors")
        del tensors[side]
        save_file(tensors, missing / "model.safetensors", metadata={"format": "pt"})
        cases.append((f"{fixture} without {side.rsplit('.', 1)[-1]}", missing, 4))
    return cases


def test_damaged_tool_files_give_one_line_and_an_exit_code(parity, tmp_path, capsys):
    pytest.importorskip("gguf")
    from awm_jax.cli.compare import main

    for label, path, code in _damaged_copies(tmp_path):
        got = main([str(parity / "llama_a"), str(path), "--no-cache", "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert got == code, (label, got, err)
        assert len(err) == 1 and err[0].startswith("awm_jax: error: "), (label, err)
