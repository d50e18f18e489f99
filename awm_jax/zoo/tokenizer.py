"""Byte-level BPE tokenizers for the zoo, trained with the ``tokenizers`` library.

Every tokenizer has the same three special tokens at ids 0, 1, 2 (``<pad>``, ``<s>``, ``</s>``)
followed by the 256 byte symbols and the learnt merges, and is saved as a Hugging Face
``tokenizer.json``. Tokenizers trained on different text share the byte symbols and the most
common merges, so the vocabularies of independently built zoo models overlap, as those of real
model families do. :func:`extend_vocabulary` appends merges learnt on a new domain to an
existing tokenizer (the vocabulary-extension derivation).
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = [
    "SPECIAL_TOKENS",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "train_bpe",
    "extend_vocabulary",
    "encode_documents",
    "vocabulary",
]

#: Special tokens, in id order.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Trains a byte-level BPE tokenizer.

    Args:
        texts: training documents.
        vocab_size: total vocabulary size including the special and byte tokens (> 259).
        min_frequency: least count of a pair to be merged.

    Returns:
        The trained tokenizer (``len(vocab) <= vocab_size``; smaller only when the text runs
        out of pairs).
    """
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + 256}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s!r} landed at id {tok.token_to_id(s)}, not {i}")
    return tok


def vocabulary(tok: Tokenizer) -> dict[str, int]:
    """Token string -> id, including special tokens."""
    return tok.get_vocab(with_added_tokens=True)


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    out = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        out.append((a, b))
    return out


def extend_vocabulary(
    base: Tokenizer, donor: Tokenizer, num_new: int
) -> tuple[Tokenizer, list[tuple[str, str]]]:
    """Appends up to ``num_new`` merges of ``donor`` to ``base``.

    Donor merges are taken in the donor's priority order; a merge ``(a, b)`` is appended when
    ``a`` and ``b`` are already tokens (of the base or appended earlier) and ``a + b`` is not.
    New tokens get ids ``len(base), len(base) + 1, ...``; existing ids are unchanged.

    Args:
        base: tokenizer to extend (byte-level BPE).
        donor: tokenizer trained on the new domain (same byte alphabet).
        num_new: how many tokens to add.

    Returns:
        ``(extended, new_pieces)`` where ``new_pieces[i] = (a, b)`` are the two existing tokens
        whose concatenation is the ``i``-th new token.
    """
    spec = json.loads(base.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"extend_vocabulary needs a BPE tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = dict(model["vocab"])
    merges = _merge_pairs(model)
    next_id = max(vocabulary(base).values()) + 1
    added: list[tuple[str, str]] = []
    for a, b in _merge_pairs(json.loads(donor.to_str())["model"]):
        if len(added) >= num_new:
            break
        if a in vocab and b in vocab and (a + b) not in vocab:
            vocab[a + b] = next_id
            next_id += 1
            merges.append((a, b))
            added.append((a, b))
    model["vocab"] = vocab
    model["merges"] = [list(m) for m in merges]
    return Tokenizer.from_str(json.dumps(spec)), added


def encode_documents(tok: Tokenizer, docs: Sequence[str], eos_id: int = EOS_ID) -> np.ndarray:
    """Encodes documents and packs them into one stream, each followed by ``eos_id``.

    Returns:
        ``[N]`` int32 token ids.
    """
    parts = []
    for enc in tok.encode_batch(list(docs), add_special_tokens=False):
        parts.append(np.asarray(enc.ids, dtype=np.int32))
        parts.append(np.asarray([eos_id], dtype=np.int32))
    if not parts:
        return np.zeros((0,), np.int32)
    return np.concatenate(parts)
