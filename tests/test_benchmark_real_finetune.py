"""The real-model fine-tune's pieces: the GGUF tokenizer, the config and the tied-head loss."""

import json

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("gguf")

from benchmarks import real_finetune  # noqa: E402


def _tiny_gguf(path, tokens, merges, types):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_tokenizer_uses_the_files_vocabulary_merges_and_control_tokens(tmp_path):
    tokens = ["<|endoftext|>", "<|im_end|>", "a", "b", "Ġ", "ab", "Ġab", "1", "2"]
    _tiny_gguf(tmp_path / "t.gguf", tokens, ["a b", "Ġ ab"], [3, 3, 1, 1, 1, 1, 1, 1, 1])
    tok = real_finetune.gguf_tokenizer(tmp_path / "t.gguf")
    enc = tok.encode("ab ab12<|im_end|>")
    assert enc.tokens == ["ab", "Ġab", "1", "2", "<|im_end|>"]
    assert enc.ids == [tokens.index(t) for t in enc.tokens]
    assert tok.decode(enc.ids, skip_special_tokens=True) == "ab ab12"
    saved = json.loads(tok.to_str())
    assert saved["model"]["vocab"] == {t: i for i, t in enumerate(tokens)}
    assert [a["content"] for a in saved["added_tokens"]] == ["<|endoftext|>", "<|im_end|>"]


def _hf_config():
    return {"vocab_size": 40, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": True}


def test_zoo_config_carries_the_shapes_theta_and_eps():
    cfg = real_finetune.zoo_config(_hf_config())
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim) == (16, 2, 4)
    assert cfg.rope_theta == 100000.0 and cfg.rms_norm_eps == 1e-5


def test_tied_loss_reads_the_head_from_the_embedding():
    from awm_jax.zoo.model import init_params
    from awm_jax.zoo.train import causal_lm_loss

    cfg = real_finetune.zoo_config(_hf_config())
    params = init_params(cfg, 0)
    untied = {k: v for k, v in params.items() if k != "lm_head"}
    batch = {"ids": np.random.default_rng(0).integers(0, 40, (2, 9)).astype(np.int32)}
    tied = real_finetune._tied_loss(cfg)(untied, batch)[0]
    reference = causal_lm_loss(cfg)(dict(params, lm_head={"weight": params["model"]["embed_tokens"]["weight"]}),
                                    batch)[0]
    with_own_head = causal_lm_loss(cfg)(params, batch)[0]
    assert float(tied) == pytest.approx(float(reference), abs=1e-6)
    assert abs(float(tied) - float(with_own_head)) > 1e-4


def test_finetune_refuses_an_untied_state():
    with pytest.raises(ValueError, match="tied-embedding"):
        real_finetune.finetune(dict(_hf_config(), tie_word_embeddings=False), {}, None,
                               real_finetune.FinetuneSpec(steps=1, learning_rate=1e-5))
