"""Corpus sampling (standard library only) and tokenizer training / extension."""

from __future__ import annotations

import json

import numpy as np
import pytest

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo import corpus
from awm_jax.zoo.data import (
    CaptionBatches,
    InstructionBatches,
    TokenWindows,
    corpus_documents,
    encode_instruction,
    parse_corpus,
)
from awm_jax.zoo.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    encode_documents,
    extend_vocabulary,
    train_bpe,
)
from awm_jax.zoo.vision import FEATURE_SIZE, render_patches


@pytest.fixture(scope="module")
def py_docs():
    return corpus.sample_documents("python-stdlib", 150_000, seed=0)


@pytest.fixture(scope="module")
def tok(py_docs):
    return train_bpe(py_docs, 400)


def test_stdlib_source_is_present_and_splits_are_disjoint():
    assert "python-stdlib" in corpus.available_sources()
    a = set(corpus.list_documents("python-stdlib", "a"))
    b = set(corpus.list_documents("python-stdlib", "b"))
    assert a and b and not (a & b)
    assert a | b == set(corpus.list_documents("python-stdlib"))


def test_sampling_is_deterministic_and_seeded(py_docs):
    again = corpus.sample_documents("python-stdlib", 150_000, seed=0)
    assert again == py_docs
    assert sum(map(len, py_docs)) >= 150_000
    other = corpus.sample_documents("python-stdlib", 150_000, seed=1)
    assert other[:3] != py_docs[:3]
    assert len(set(py_docs)) == len(py_docs)  # de-duplicated


def test_mixed_corpus_spec():
    docs = corpus_documents("python-stdlib:a+python-stdlib:b", 60_000, seed=2)
    assert sum(map(len, docs)) >= 60_000
    assert parse_corpus("man-pages:b") == ("man-pages", "b")
    with pytest.raises(ValueError, match="split"):
        parse_corpus("python-stdlib:c")
    with pytest.raises(ValueError, match="unknown corpus source"):
        corpus.sample_documents("wikipedia", 10, 0)


def test_strip_troff():
    page = "\n".join([
        '.\\" comment', ".TH LS 1", ".SH NAME", "ls \\- list directory contents",
        ".SH SYNOPSIS", ".B ls", "[\\fIOPTION\\fR]... [\\fIFILE\\fR]...", ".PP",
        "Sort entries \\(em alphabetically.",
    ])
    text = corpus.strip_troff(page)
    assert "comment" not in text and ".TH" not in text and "\\f" not in text
    assert "NAME" in text and "ls - list directory contents" in text
    assert "[OPTION]... [FILE]..." in text and "Sort entries -- alphabetically." in text
    assert corpus.strip_troff(".so man1/other.1") == ""


def test_instruction_pairs_from_docstrings():
    pairs = corpus.instruction_pairs(50, seed=0, split="a")
    assert len(pairs) == 50 and len({q for q, _ in pairs}) == 50
    assert all(q.startswith("What ") and "`" in q and a for q, a in pairs)
    assert corpus.instruction_pairs(50, seed=0, split="a") == pairs


def test_tokenizer_specials_and_round_trip(tok):
    vocab = tok.get_vocab()
    assert [vocab[s] for s in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID]
    assert tok.get_vocab_size() == 400
    text = "def frobnicate(x):\n    return x  # done"
    assert tok.decode(tok.encode(text).ids) == text
    spec = json.loads(tok.to_str())
    assert spec["model"]["type"] == "BPE"


def test_extend_vocabulary_keeps_old_ids(tok):
    donor = train_bpe(["The manual page explains options and commands.\n" * 50] * 4, 320,
                      min_frequency=1)
    ext, added = extend_vocabulary(tok, donor, 12)
    assert 0 < len(added) <= 12
    old, new = tok.get_vocab(), ext.get_vocab()
    assert all(new[t] == i for t, i in old.items())
    assert sorted(new[a + b] for a, b in added) == list(range(len(old), len(old) + len(added)))
    new_ids = set(range(len(old), len(old) + len(added)))
    text = " ".join(ext.decode([i]) for i in sorted(new_ids))
    assert ext.decode(ext.encode(text).ids) == text
    assert new_ids & set(ext.encode(text).ids), "no added token is ever produced"
    assert not new_ids & set(tok.encode(text).ids)


def test_batches_have_fixed_shapes_and_masks(tok, py_docs):
    tokens = encode_documents(tok, py_docs[:5])
    assert tokens.dtype == np.int32 and (tokens == EOS_ID).sum() == 5
    w = TokenWindows(tokens, 4, 16, seed=0)
    b1, b2 = next(w), next(TokenWindows(tokens, 4, 16, seed=0))
    assert b1["ids"].shape == (4, 17)
    np.testing.assert_array_equal(b1["ids"], b2["ids"])
    ids, mask, plen = encode_instruction(tok, "What does `f()` do?", "It returns one.", 64)
    assert ids.shape == (65,) and mask.shape == (64,)
    answer = ids[1:][mask > 0]
    assert tok.decode(answer[:-1].tolist()) == "It returns one." and answer[-1] == EOS_ID
    ib = next(InstructionBatches(tok, corpus.instruction_pairs(20, 0), 3, 64, seed=0))
    assert ib["ids"].shape == (3, 65) and ib["mask"].shape == (3, 64)
    cb = next(CaptionBatches(tok, ["import os", "return x + 1"], 2, 12, 10, seed=0))
    assert cb["feats"].shape == (2, 10, FEATURE_SIZE) and cb["ids"][:, 0].tolist() == [BOS_ID] * 2


def test_render_patches_shape_and_content():
    p = render_patches(["hello world", ""], 6)
    assert p.shape == (2, 6, FEATURE_SIZE) and p.dtype == np.float32
    assert p.min() >= -0.5 and p.max() <= 0.5
    assert p[0].max() > 0.0 and np.all(p[1] == -0.5)  # ink vs blank canvas
