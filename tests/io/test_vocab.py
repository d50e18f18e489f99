"""Vocabulary readers and shared rows."""

import base64
import json

import numpy as np
import pytest

from awm_jax.errors import VocabularyError
from awm_jax.io.vocab import bytes_to_unicode, load_vocabulary, shared_rows


def test_bpe_dict_with_added_tokens(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": []},
        "added_tokens": [{"id": 3, "content": "<pad>"}],
    }))
    v = load_vocabulary(tmp_path)
    assert v.tokens == {"a": 0, "b": 1, "ab": 2, "<pad>": 3} and v.kind == "tokenizer.json"


def test_unigram_list_vocab(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["▁the", -1.5], ["s", -2.0]]}}))
    assert load_vocabulary(tmp_path).tokens == {"<unk>": 0, "▁the": 1, "s": 2}


def test_tiktoken_bytes_are_lossless_and_match_byte_level_strings(tmp_path):
    raw = [b"hello", b"\xff\xfe", b"\xff\xfd", b" world", b"\xe4\xb8"]  # invalid UTF-8 must not collide
    (tmp_path / "tokenizer.model").write_text("\n".join(f"{base64.b64encode(t).decode()} {i}" for i, t in enumerate(raw)))
    v = load_vocabulary(tmp_path)
    assert v.kind == "tiktoken" and len(v) == 5 and v.duplicate_ids == 0
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert v.tokens["Ġworld"] == 3  # the same token as written in a byte-level tokenizer.json


def test_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog"] * 50 + ["a b c d e f g h"] * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=40,
                                   minloglevel=2, hard_vocab_limit=False)
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "m.model").rename(folder / "tokenizer.model")
    v = load_vocabulary(folder)
    assert v.kind == "sentencepiece" and v.tokens["<unk>"] == 0 and len(v) >= 20


def test_missing_and_broken_tokenizers(tmp_path):
    with pytest.raises(VocabularyError, match="no tokenizer.json"):
        load_vocabulary(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(VocabularyError, match="not a tokenizer.json"):
        load_vocabulary(tmp_path)


def test_shared_rows_drop_ids_beyond_embedding(tmp_path):
    from awm_jax.io.vocab import Vocabulary

    a = Vocabulary({"x": 0, "y": 1, "z": 5}, "a", "t")
    b = Vocabulary({"y": 3, "z": 0, "x": 9, "w": 1}, "b", "t")
    s = shared_rows(a, b, rows_a=4, rows_b=8)
    assert s.shared_tokens == 3 and s.dropped_a == 1 and s.dropped_b == 1
    np.testing.assert_array_equal(s.ids_a, [1])
    np.testing.assert_array_equal(s.ids_b, [3])
    with pytest.raises(VocabularyError, match="share no tokens"):
        shared_rows(a, Vocabulary({"q": 0}, "c", "t"), 4, 4)
