"""Detection: config first, then exact tensor names; overrides; wrappers, MTP layers and second stacks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.errors import LayoutError, UsageError
from awm_jax.layouts import REGISTRY, FusedSplit, Layout, detect
from awm_jax.synthetic import llama_config, write_model
from ._fixtures import MANIFEST, assert_same_rows, case_dir, truth_qk

DOCS = Path(__file__).resolve().parents[2] / "docs" / "layouts.md"
WRAPPED = [c for c, info in MANIFEST["cases"].items() if "*" in info["note"]]


def _copy(case: str, folder: Path, config_edit=None) -> Path:
    shutil.copytree(case_dir(case), folder)
    if config_edit is not None:
        cfg = json.loads((folder / "config.json").read_text())
        config_edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _strip_identity(cfg: dict) -> None:
    for scope in (cfg, cfg.get("text_config") or {}):
        scope.pop("architectures", None)
        scope.pop("model_type", None)


@pytest.mark.parametrize("case", ["llama_gqa", "gpt_neox", "gpt2", "gpt2_bare", "falcon_40b", "falcon_rw", "phi3",
                                  "internlm2", "chatglm", "qwen1", "deepseek_v3", "llava", "qwen2_vl", "smolvlm"])
def test_tensor_names_alone_give_the_same_reading(case, tmp_path):
    """Without architectures/model_type in config.json the exact names still lead to the true Q/K."""
    r = detect(Checkpoint(_copy(case, tmp_path / case, _strip_identity)))
    q, k = r.read_qk(1)
    want_q, want_k = truth_qk(case, 1)
    assert_same_rows(q, want_q, f"{case} Wq")
    assert_same_rows(k, want_k, f"{case} Wk")


@pytest.mark.parametrize("case", WRAPPED)
def test_wrapped_models_read_only_the_language_model(case):
    r = detect(Checkpoint(case_dir(case)))
    names = {n for layer in range(r.num_layers) for n in r.tensor_names(layer)}
    tower = [n for n in r.ckpt.tensors if re.search(r"vision|visual|audio", n)]
    assert tower, "the fixture has no tower to collide with"
    assert not names & set(tower)
    assert all(n.startswith(r.prefix) for n in names)
    assert r.prefix in ("model.", "language_model.model.", "model.language_model.", "model.text_model.")


def test_override_by_name(tmp_path):
    r = detect(Checkpoint(case_dir("llama")), "llama")
    assert r.name == "llama"
    with pytest.raises(LayoutError, match=r"do not follow the 'gpt_neox' layout"):
        detect(Checkpoint(case_dir("llama")), "gpt_neox")


def test_unknown_override_is_a_usage_error():
    with pytest.raises(UsageError, match=r"unknown layout 'llama3'.*llama, mistral.*\.toml layout file"):
        detect(Checkpoint(case_dir("llama")), "llama3")
    with pytest.raises(UsageError, match=r"missing\.toml: layout file not found"):
        detect(Checkpoint(case_dir("llama")), "missing.toml")


def _docs_toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_the_documented_layout_file_example_reads_internlm2(tmp_path):
    """The first TOML example of docs/layouts.md, used as a layout file, reads the InternLM2 fixture exactly."""
    example = tmp_path / "my-decoder.toml"
    example.write_text(_docs_toml_blocks()[0])
    folder = _copy("internlm2", tmp_path / "m", _strip_identity)
    r = detect(Checkpoint(folder), str(example))
    assert r.name == "my-decoder"
    for layer in range(2):
        q, k = r.read_qk(layer)
        want_q, want_k = truth_qk("internlm2", layer)
        assert_same_rows(q, want_q, "Wq")
        assert_same_rows(k, want_k, "Wk")
    (gate_up,) = r.read_mlp(0)
    np.testing.assert_array_equal(gate_up.gate, detect(Checkpoint(case_dir("internlm2"))).read_mlp(0)[0].gate)


def test_the_documented_separate_projection_example(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((16, 32)).astype(np.float32)
    wq = [rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2)]
    wk = [rng.standard_normal((16, 32)).astype(np.float32) for _ in range(2)]
    specs = [("tok.weight", emb.shape, np.float32, lambda: emb)]
    for i in range(2):
        specs += [(f"blocks.{i}.attn.wq.weight", wq[i].shape, np.float32, lambda a=wq[i]: a),
                  (f"blocks.{i}.attn.wk.weight", wk[i].shape, np.float32, lambda a=wk[i]: a)]
    folder = write_model(tmp_path / "m", specs, {"n_layers": 2, "dim": 32}, [f"t{i}" for i in range(16)])
    layout = tmp_path / "sep.toml"
    layout.write_text('name = "sep"\nembedding = "tok.weight"\n' + _docs_toml_blocks()[1])
    r = detect(Checkpoint(folder), layout)
    assert (r.num_layers, r.hidden_size) == (2, 32)
    np.testing.assert_array_equal(r.read_qk(1)[0], wq[1])
    np.testing.assert_array_equal(r.read_qk(1)[1], wk[1])


def test_unknown_layout_lists_the_tensor_names_and_the_docs(tmp_path):
    rng = np.random.default_rng(1)
    specs = [("tok_emb.weight", (8, 16), np.float32, lambda: rng.standard_normal((8, 16)))]
    for i in range(3):
        specs.append((f"blocks.{i}.attn.wqkv.weight", (48, 16), np.float32, lambda: rng.standard_normal((48, 16))))
    folder = write_model(tmp_path / "m", specs, {"architectures": ["MyModel"], "hidden_size": 16}, ["a"] * 8)
    with pytest.raises(LayoutError) as err:
        detect(Checkpoint(folder))
    msg = str(err.value)
    assert "no known layout fits" in msg and "MyModel" in msg
    assert "blocks.N.attn.wqkv.weight" in msg and "tok_emb.weight" in msg
    assert "docs/layouts.md" in msg and "--layout" in msg
    assert "\n" not in msg


def test_ambiguous_tensor_names_ask_for_an_override(tmp_path, monkeypatch):
    """Two layouts that fit the names but read layer 0 differently: refuse instead of guessing."""
    folder = _copy("gpt_neox", tmp_path / "m", _strip_identity)
    neox = REGISTRY["gpt_neox"]
    blocks = Layout(name="neox_blocks", architectures=(), model_types=(), embedding=neox.embedding,
                    query=FusedSplit(neox.query.name, "q", "blocks"), key=FusedSplit(neox.key.name, "k", "blocks"),
                    bases=neox.bases, dims=neox.dims)
    monkeypatch.setitem(REGISTRY, "neox_blocks", blocks)
    with pytest.raises(LayoutError, match=r"read layer 0 differently \(gpt_neox, neox_blocks\).*--layout"):
        detect(Checkpoint(folder))
    assert detect(Checkpoint(folder), "gpt_neox").name == "gpt_neox"


def test_mtp_layers_are_not_decoder_layers(tmp_path):
    r = detect(Checkpoint(case_dir("deepseek_v3")))
    assert r.num_layers == 2
    assert "model.layers.2.self_attn.kv_b_proj.weight" in r.ckpt  # the MTP module is there, unread
    with pytest.raises(IndexError):
        r.read_qk(2)
    folder = _copy("deepseek_v3", tmp_path / "m", lambda cfg: cfg.pop("num_nextn_predict_layers"))
    with pytest.raises(LayoutError, match=r"declares 2 layers \(and 0 multi-token-prediction layers\) but the tensors "
                                          r"hold 3 layers"):
        detect(Checkpoint(folder))


def test_layer_count_must_match_the_config(tmp_path):
    folder = _copy("qwen2", tmp_path / "m", lambda cfg: cfg.update(num_hidden_layers=3))
    with pytest.raises(LayoutError, match=r"declares 3 layers but only layers 0-1 .* are complete"):
        detect(Checkpoint(folder))


def test_hidden_size_must_match_the_config(tmp_path):
    folder = _copy("gpt2", tmp_path / "m", lambda cfg: cfg.update(n_embd=48))
    with pytest.raises(LayoutError, match=r"hidden size 48 but .*wte.weight has 64 columns"):
        detect(Checkpoint(folder))


def test_fused_split_checks_the_config(tmp_path):
    folder = _copy("phi3", tmp_path / "m", lambda cfg: cfg.update(num_key_value_heads=4))
    with pytest.raises(LayoutError, match=r"qkv_proj.weight has shape \(128, 64\).*config implies 192 fused rows"):
        detect(Checkpoint(folder))


def test_fused_split_without_head_counts_says_so(tmp_path):
    def drop(cfg):
        cfg.pop("n_head", None)
        cfg.pop("num_attention_heads", None)
    folder = _copy("bloom", tmp_path / "m", drop)
    with pytest.raises(LayoutError, match=r"needs the head counts from config.json"):
        detect(Checkpoint(folder))


def _stack(prefix: str, rng, layers=2, vocab=16, hidden=32):
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    specs = [(f"{prefix}embed_tokens.weight", emb.shape, np.float32, lambda a=emb: a)]
    qs = []
    for i in range(layers):
        q = rng.standard_normal((hidden, hidden)).astype(np.float32)
        qs.append(q)
        specs += [(f"{prefix}layers.{i}.self_attn.q_proj.weight", q.shape, np.float32, lambda a=q: a),
                  (f"{prefix}layers.{i}.self_attn.k_proj.weight", q.shape, np.float32, lambda a=q: a + 1)]
    return specs, qs


def test_second_stack_never_collides_with_the_language_model(tmp_path):
    """Qwen2.5-Omni style: ``thinker.model.*`` is the language model, ``talker.model.*`` a second stack."""
    rng = np.random.default_rng(2)
    thinker, tq = _stack("thinker.model.", rng)
    talker, _ = _stack("talker.model.", rng, layers=3)
    cfg = {"architectures": ["Qwen2_5OmniModel"], "thinker_config": {"text_config": {
        "model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}}}
    r = detect(Checkpoint(write_model(tmp_path / "m", talker + thinker, cfg, [f"t{i}" for i in range(16)])))
    assert (r.name, r.prefix, r.num_layers) == ("qwen2", "thinker.model.", 2)
    np.testing.assert_array_equal(r.read_qk(1)[0], tq[1])


def test_two_language_model_stacks_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    a, _ = _stack("model.", rng)
    b, _ = _stack("language_model.model.", rng)
    cfg = llama_config(16, 32, 2, 2, 2, 16)
    with pytest.raises(LayoutError,
                       match=r"holds 2 'llama' stacks .*model\.layers\.0.*language_model\.model\.layers\.0"):
        detect(Checkpoint(write_model(tmp_path / "m", a + b, cfg, [f"t{i}" for i in range(16)])))


@pytest.mark.parametrize("case", ["mixtral", "qwen2_moe", "phi", "starcoder2", "glm"])
def test_name_detection_prefers_a_layout_whose_mlp_is_present(case, tmp_path):
    """Llama-like families share Q/K names; without config identity the MLP tensors pick the family."""
    r = detect(Checkpoint(_copy(case, tmp_path / case, _strip_identity)))
    assert r.name == MANIFEST["cases"][case]["layout"]
    assert len(r.read_mlp(1)) == MANIFEST["cases"][case]["mlp_blocks"][1]


def test_a_layout_file_that_does_not_fit_says_what_it_looked_for(tmp_path):
    layout = tmp_path / "wrong.toml"
    layout.write_text('embedding = "tok.weight"\n'
                      '[query]\ntensor = "b.{i}.wq.weight"\n[key]\ntensor = "b.{i}.wk.weight"\n')
    with pytest.raises(LayoutError, match=r"do not follow the 'wrong' layout: no 'b\.0\.wq\.weight' with an embedding "
                                          r"'tok\.weight'$"):
        detect(Checkpoint(case_dir("llama")), layout)
