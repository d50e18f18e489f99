"""Vocabularies: token -> id maps read from a model folder, and the shared-token rows.

A GGUF model (a ``.gguf`` path) carries its vocabulary in its ``tokenizer.ggml.tokens``
metadata (:mod:`awm_jax.io.gguf`). For model folders the sources, in order of preference: ``tokenizer.json`` (BPE / WordLevel / WordPiece dict vocab,
Unigram list vocab, plus ``added_tokens``), ``tokenizer.model`` (SentencePiece protobuf, or a
tiktoken rank file as Llama-3 ships it), ``*.tiktoken``, ``vocab.json``.

Tokens are compared by exact string equality (docs/method.md step 1). tiktoken ranks are raw
bytes; they are mapped losslessly to the byte-level alphabet that Hugging Face byte-level BPE
files use (each byte to one printable character), so no two byte tokens collide and a tiktoken
vocabulary matches the same tokens written as ``tokenizer.json``.

Tokenizer files come from strangers: each is opened only if it is a regular file, read up to
``MAX_JSON_BYTES``, decoded as strict UTF-8 (a file that is not is refused, it is not guessed)
and checked entry by entry; every problem is a one-line :class:`VocabularyError`.

Duplicates. A token string maps to one id: when a file lists a string twice, the later entry
wins, as in the tokenizers library (``added_tokens`` override ``model.vocab``). Several
strings claiming the same id are kept (each maps to its own id, and that embedding row then
serves each of them; the count is :attr:`Vocabulary.duplicate_ids`), but a vocabulary in which
more than ``MAX_DUPLICATE_FRACTION`` of the tokens share their id is refused as corrupt.

Ids beyond the embedding. Shared tokens whose id is beyond a model's embedding rows are
dropped and counted (a few added tokens often are); when more than ``MAX_DROPPED_FRACTION`` of
the shared tokens are, the tokenizer does not belong to the weights and the pair is refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from awm_jax.io.checkpoint import MAX_JSON_BYTES, open_regular, read_json
from awm_jax.errors import VocabularyError

__all__ = [
    "Vocabulary",
    "SharedRows",
    "load_vocabulary",
    "shared_rows",
    "bytes_to_unicode",
    "MAX_TOKEN_ID",
    "MAX_DUPLICATE_FRACTION",
    "MAX_DROPPED_FRACTION",
]

#: Largest token id accepted (ids index embedding rows; larger ones mean a corrupt file).
MAX_TOKEN_ID = 2**31 - 1
#: Largest fraction of a vocabulary's tokens that may share their id with another token.
MAX_DUPLICATE_FRACTION = 0.01
#: Largest fraction of the shared tokens whose ids may lie beyond a model's embedding rows.
MAX_DROPPED_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A token -> id map and where it came from.

    Attributes:
      tokens: token string -> id.
      source: the file it was read from.
      kind: ``"tokenizer.json"``, ``"sentencepiece"``, ``"tiktoken"``, ``"vocab.json"`` or ``"gguf"``.
      duplicate_ids: number of tokens beyond the first claiming an id (kept: each token maps
        to its own id, and a row may then be used by several tokens).
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


def _short(value: object, limit: int = 60) -> str:
    """``repr`` of a value taken from a file, cut to ``limit`` characters for messages."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _finish(pairs: list[tuple[object, object]], source: Path, kind: str) -> Vocabulary:
    fix = "the tokenizer file is corrupt: fetch the model's tokenizer files again"
    tokens: dict[str, int] = {}
    for tok, i in pairs:
        if not isinstance(tok, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise VocabularyError(
                f"{source}: entry {_short(tok)} -> {_short(i)} is not a token string with a non-negative id; {fix}"
            )
        if i > MAX_TOKEN_ID:
            raise VocabularyError(f"{source}: token {_short(tok)} has id {_short(i)}, above {MAX_TOKEN_ID}; {fix}")
        tokens[tok] = i
    if not tokens:
        raise VocabularyError(f"{source}: the vocabulary is empty; {fix}")
    duplicates = len(tokens) - len(set(tokens.values()))
    if duplicates > MAX_DUPLICATE_FRACTION * len(tokens):
        first: dict[int, str] = {}
        for tok, i in tokens.items():
            if i in first:
                example = f"{_short(first[i])} and {_short(tok)} both -> {i}"
                break
            first[i] = tok
        raise VocabularyError(
            f"{source}: {duplicates} of its {len(tokens)} tokens share an id with another token ({example}), more "
            f"than the {MAX_DUPLICATE_FRACTION:.0%} tolerated; {fix}"
        )
    return Vocabulary(tokens, str(source), kind, duplicates)


def _from_tokenizer_json(path: Path) -> Vocabulary:
    fix = ("this is not a tokenizer.json with a model.vocab: fetch the model's tokenizer.json again "
           "(or remove it: tokenizer.model is used otherwise)")
    data = read_json(path, VocabularyError, fix)
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):  # BPE, WordLevel, WordPiece
        pairs: list[tuple[object, object]] = list(vocab.items())
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        if not all(isinstance(entry, list) and entry for entry in vocab):
            raise VocabularyError(f"{path}: Unigram vocab entries must be [piece, score] pairs; fetch the model's tokenizer.json again")
        pairs = [(entry[0], i) for i, entry in enumerate(vocab)]
    else:
        raise VocabularyError(
            f"{path}: not a tokenizer.json with a model.vocab object or list; fetch the model's tokenizer.json again "
            "(or remove it: tokenizer.model is used otherwise)"
        )
    added = data.get("added_tokens")
    if added is not None and not isinstance(added, list):
        raise VocabularyError(f"{path}: added_tokens is not a list; fetch the model's tokenizer.json again")
    for entry in added or []:
        if isinstance(entry, dict) and "content" in entry and "id" in entry:
            pairs.append((entry["content"], entry["id"]))
    return _finish(pairs, path, "tokenizer.json")


def _tiktoken_pairs(text: bytes) -> list[tuple[object, object]] | None:
    """Parses a tiktoken rank file (``base64 rank`` per line); ``None`` if it is not one."""
    alphabet = bytes_to_unicode()
    pairs: list[tuple[object, object]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or len(parts[1]) > 12:
            return None
        try:
            raw = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            return None
        pairs.append(("".join(alphabet[b] for b in raw), int(parts[1])))
    return pairs or None


def _read_bytes(path: Path) -> bytes:
    """Reads a tokenizer file (regular file, at most ``MAX_JSON_BYTES``)."""
    with open_regular(path, VocabularyError) as f:
        try:
            data = f.read(MAX_JSON_BYTES + 1)
        except OSError as e:
            raise VocabularyError(f"{path}: cannot read ({e.strerror or e}); check its permissions") from None
    if len(data) > MAX_JSON_BYTES:
        raise VocabularyError(f"{path}: is more than the {MAX_JSON_BYTES} bytes accepted for a tokenizer file; fetch it again")
    return data


def _from_sentencepiece(path: Path, data: bytes) -> Vocabulary:
    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - declared dependency
        raise VocabularyError(f"{path}: reading SentencePiece models needs the 'sentencepiece' package: pip install sentencepiece") from None
    fix = "fetch the model's tokenizer.model again"
    if not data:
        raise VocabularyError(f"{path}: is empty; {fix}")
    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
        pieces = [(sp.id_to_piece(i), i) for i in range(sp.get_piece_size())]
    except Exception:  # noqa: BLE001 - the C++ library raises several types for corrupt files
        raise VocabularyError(f"{path}: not a readable SentencePiece model or tiktoken rank file; {fix}") from None
    return _finish(pieces, path, "sentencepiece")


def _from_vocab_json(path: Path) -> Vocabulary:
    fix = "fetch the model's vocab.json again"
    vocab = read_json(path, VocabularyError, fix)
    if not isinstance(vocab, dict):
        raise VocabularyError(f"{path}: not a JSON token -> id object; {fix}")
    return _finish(list(vocab.items()), path, "vocab.json")


def load_vocabulary(folder: str | os.PathLike) -> Vocabulary:
    """Reads the vocabulary of a model folder.

    The first tokenizer file present is used (see the module docstring for the order); a file
    that is present but unreadable is an error, never silently skipped.

    Raises:
      VocabularyError: no tokenizer file, or the file is unreadable or malformed.
    """
    root = Path(folder)
    if root.name.endswith(".gguf") and root.is_file():  # a GGUF model carries its vocabulary in its metadata
        from awm_jax.io.gguf import gguf_tokens

        return _finish(list(zip(gguf_tokens(root), range(MAX_TOKEN_ID))), root, "gguf")
    try:
        names = set(os.listdir(root))
    except OSError as e:
        raise VocabularyError(f"{root}: cannot list the folder ({e.strerror or e}); check the path and its permissions") from None
    if "tokenizer.json" in names:
        return _from_tokenizer_json(root / "tokenizer.json")
    if "tokenizer.model" in names:
        tm = root / "tokenizer.model"
        data = _read_bytes(tm)
        pairs = _tiktoken_pairs(data)  # Llama-3 ships its tiktoken ranks under this name
        return _finish(pairs, tm, "tiktoken") if pairs is not None else _from_sentencepiece(tm, data)
    for name in sorted(n for n in names if n.endswith(".tiktoken")):
        tk = root / name
        pairs = _tiktoken_pairs(_read_bytes(tk))
        if pairs is None:
            raise VocabularyError(f"{tk}: not a tiktoken rank file (expected 'base64 rank' per line); fetch it again")
        return _finish(pairs, tk, "tiktoken")
    if "vocab.json" in names:
        return _from_vocab_json(root / "vocab.json")
    raise VocabularyError(
        f"{root}: no tokenizer.json, tokenizer.model, *.tiktoken or vocab.json; copy the model's tokenizer "
        "files into the folder (the embedding rows cannot be matched without them)"
    )


def shared_rows(a: Vocabulary, b: Vocabulary, rows_a: int, rows_b: int) -> SharedRows:
    """Pairs the embedding rows of the tokens both vocabularies contain (docs/method.md step 1).

    Ids beyond a model's embedding rows are dropped and counted, not an error, unless more
    than ``MAX_DROPPED_FRACTION`` of the shared tokens are (the tokenizer then belongs to
    other weights).

    Args:
      a: vocabulary of model A.
      b: vocabulary of model B.
      rows_a: rows of A's embedding.
      rows_b: rows of B's embedding.

    Raises:
      VocabularyError: no token is shared (within the embeddings' rows), or most shared ids
        lie beyond one model's embedding.
    """
    common = a.tokens.keys() & b.tokens.keys()
    pairs = sorted((a.tokens[t], b.tokens[t]) for t in common)
    ids = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keep_a, keep_b = ids[:, 0] < rows_a, ids[:, 1] < rows_b
    keep = keep_a & keep_b
    out = SharedRows(ids[keep, 0], ids[keep, 1], len(common), int((~keep_a).sum()), int((~keep_b).sum()))
    for vocab, dropped, rows in ((a, out.dropped_a, rows_a), (b, out.dropped_b, rows_b)):
        if common and dropped > MAX_DROPPED_FRACTION * len(common):
            raise VocabularyError(
                f"{vocab.source}: {dropped} of the {len(common)} shared tokens have ids beyond the {rows} rows of "
                "the model's embedding; this tokenizer does not belong to these weights: copy the model's own "
                "tokenizer files into its folder"
            )
    if len(out) == 0:
        raise VocabularyError(
            f"{a.source} and {b.source} share no tokens within the embeddings ({len(common)} shared strings); "
            "the embedding dimensions cannot be aligned: these models use unrelated vocabularies"
        )
    return out
