"""Vocabularies: token -> id maps read from a model folder, and the shared-token rows.

Sources, in order of preference: ``tokenizer.json`` (BPE / WordLevel / WordPiece dict vocab,
Unigram list vocab, plus ``added_tokens``), ``tokenizer.model`` (SentencePiece protobuf, or a
tiktoken rank file as Llama-3 ships it), ``*.tiktoken``, ``vocab.json``.

Tokens are compared by exact string equality (ALGORITHM.md step 1). tiktoken ranks are raw
bytes; they are mapped losslessly to the byte-level alphabet that Hugging Face byte-level BPE
files use (each byte to one printable character), so no two byte tokens collide and a tiktoken
vocabulary matches the same tokens written as ``tokenizer.json``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from awm_jax.errors import VocabularyError

__all__ = ["Vocabulary", "SharedRows", "load_vocabulary", "shared_rows", "bytes_to_unicode"]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A token -> id map and where it came from.

    Attributes:
      tokens: token string -> id.
      source: the file it was read from.
      kind: ``"tokenizer.json"``, ``"sentencepiece"``, ``"tiktoken"`` or ``"vocab.json"``.
      duplicate_ids: number of ids claimed by more than one token (kept: each token maps to
        its own id, and a row may then be used by several tokens).
    """

    tokens: Mapping[str, int]
    source: str
    kind: str
    duplicate_ids: int = 0

    def __len__(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class SharedRows:
    """Embedding rows of the tokens present in both vocabularies, in the same order.

    Attributes:
      ids_a: ``[T]`` rows of model A.
      ids_b: ``[T]`` rows of model B.
      shared_tokens: tokens present in both vocabularies (before dropping).
      dropped_a: shared tokens dropped because A's id is beyond its embedding rows.
      dropped_b: likewise for B.
    """

    ids_a: np.ndarray
    ids_b: np.ndarray
    shared_tokens: int
    dropped_a: int
    dropped_b: int

    def __len__(self) -> int:
        return int(self.ids_a.size)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: a bijection from the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def _finish(pairs: list[tuple[str, int]], source: Path, kind: str) -> Vocabulary:
    tokens: dict[str, int] = {}
    for tok, i in pairs:
        if not isinstance(tok, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise VocabularyError(f"{source}: entry {tok!r} -> {i!r} is not a token string with a non-negative id")
        tokens[tok] = i
    if not tokens:
        raise VocabularyError(f"{source}: the vocabulary is empty")
    duplicates = len(tokens) - len(set(tokens.values()))
    return Vocabulary(tokens, str(source), kind, duplicates)


def _from_tokenizer_json(path: Path) -> Vocabulary:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab = model["vocab"]
    except OSError as e:
        raise VocabularyError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise VocabularyError(
            f"{path}: not a tokenizer.json with a model.vocab; fix or remove it (tokenizer.model is used otherwise)"
        ) from None
    if isinstance(vocab, dict):  # BPE, WordLevel, WordPiece
        pairs = list(vocab.items())
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        try:
            pairs = [(entry[0], i) for i, entry in enumerate(vocab)]
        except (TypeError, IndexError, KeyError):
            raise VocabularyError(f"{path}: Unigram vocab entries must be [piece, score] pairs") from None
    else:
        raise VocabularyError(f"{path}: model.vocab is neither a dict nor a list")
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and "content" in added and "id" in added:
            pairs.append((added["content"], added["id"]))
    return _finish(pairs, path, "tokenizer.json")


def _tiktoken_pairs(path: Path, text: bytes) -> list[tuple[str, int]] | None:
    """Parses a tiktoken rank file (``base64 rank`` per line); ``None`` if it is not one."""
    alphabet = bytes_to_unicode()
    pairs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            return None
        try:
            raw = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError):
            return None
        pairs.append(("".join(alphabet[b] for b in raw), rank))
    return pairs or None


def _from_sentencepiece(path: Path) -> Vocabulary:
    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - declared dependency
        raise VocabularyError(f"{path}: reading SentencePiece models needs the 'sentencepiece' package: pip install sentencepiece") from None
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise VocabularyError(f"{path}: not a readable SentencePiece model ({e}); fetch it again") from None
    return _finish([(sp.id_to_piece(i), i) for i in range(sp.get_piece_size())], path, "sentencepiece")


def _from_tiktoken(path: Path) -> Vocabulary | None:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise VocabularyError(f"{path}: cannot read ({e.strerror})") from None
    pairs = _tiktoken_pairs(path, text)
    return None if pairs is None else _finish(pairs, path, "tiktoken")


def _from_vocab_json(path: Path) -> Vocabulary:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(vocab, dict):
            raise TypeError
    except OSError as e:
        raise VocabularyError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        raise VocabularyError(f"{path}: not a JSON token -> id object") from None
    return _finish(list(vocab.items()), path, "vocab.json")


def load_vocabulary(folder: str | Path) -> Vocabulary:
    """Reads the vocabulary of a model folder.

    Raises:
      VocabularyError: no tokenizer file, or the file is unreadable.
    """
    root = Path(folder)
    tj = root / "tokenizer.json"
    if tj.is_file():
        return _from_tokenizer_json(tj)
    tm = root / "tokenizer.model"
    if tm.is_file():
        vocab = _from_tiktoken(tm)  # Llama-3 ships its tiktoken ranks under this name
        return vocab if vocab is not None else _from_sentencepiece(tm)
    for tk in sorted(root.glob("*.tiktoken")):
        vocab = _from_tiktoken(tk)
        if vocab is None:
            raise VocabularyError(f"{tk}: not a tiktoken rank file (expected 'base64 rank' per line)")
        return vocab
    vj = root / "vocab.json"
    if vj.is_file():
        return _from_vocab_json(vj)
    raise VocabularyError(
        f"{root}: no tokenizer.json, tokenizer.model, *.tiktoken or vocab.json; copy the model's tokenizer "
        "files into the folder (the embedding rows cannot be matched without them)"
    )


def shared_rows(a: Vocabulary, b: Vocabulary, rows_a: int, rows_b: int) -> SharedRows:
    """Pairs the embedding rows of the tokens both vocabularies contain (ALGORITHM.md step 1).

    Ids beyond a model's embedding rows are dropped and counted, not an error.

    Args:
      a: vocabulary of model A.
      b: vocabulary of model B.
      rows_a: rows of A's embedding.
      rows_b: rows of B's embedding.

    Raises:
      VocabularyError: no token is shared (within the embeddings' rows).
    """
    common = a.tokens.keys() & b.tokens.keys()
    pairs = sorted((a.tokens[t], b.tokens[t]) for t in common)
    ids = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keep_a, keep_b = ids[:, 0] < rows_a, ids[:, 1] < rows_b
    keep = keep_a & keep_b
    out = SharedRows(ids[keep, 0], ids[keep, 1], len(common), int((~keep_a).sum()), int((~keep_b).sum()))
    if len(out) == 0:
        raise VocabularyError(
            f"{a.source} and {b.source} share no tokens within the embeddings ({len(common)} shared strings); "
            "the embedding dimensions cannot be aligned: these models use unrelated vocabularies"
        )
    return out
