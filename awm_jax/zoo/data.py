"""Training batches: packed language-model windows, answer-masked instructions, image captions.

Every sampler is an iterator of numpy dicts with fixed shapes (one compilation per run) and is
seeded, so a training run is reproducible from its seeds. Corpora are named ``"source"`` or
``"source:split"`` (see :mod:`awm_jax.zoo.corpus`), e.g. ``"python-stdlib:a"``, and several
can be mixed with ``"+"``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

from awm_jax.zoo import corpus
from awm_jax.zoo.tokenizer import BOS_ID, EOS_ID, PAD_ID, encode_documents
from awm_jax.zoo.vision import render_patches

__all__ = [
    "parse_corpus",
    "corpus_documents",
    "corpus_tokens",
    "TokenWindows",
    "encode_instruction",
    "InstructionBatches",
    "text_lines",
    "CaptionBatches",
]

Batch = dict[str, np.ndarray]


def parse_corpus(spec: str) -> tuple[str, corpus.Split]:
    """Splits ``"source[:split]"`` into ``(source, split)``."""
    name, _, split = spec.partition(":")
    if split not in ("", "a", "b"):
        raise ValueError(f"corpus split must be 'a' or 'b', got {spec!r}")
    return name, (split or None)  # type: ignore[return-value]


def corpus_documents(spec: str, max_chars: int, seed: int) -> list[str]:
    """Documents of a named corpus up to ``max_chars`` characters (seeded order).

    ``spec`` may join several corpora with ``"+"`` (e.g. ``"python-stdlib+man-pages"``); each
    then contributes an equal share of the characters and the documents are interleaved in a
    seeded order.
    """
    parts = spec.split("+")
    docs: list[str] = []
    for i, part in enumerate(parts):
        name, split = parse_corpus(part)
        docs.extend(corpus.sample_documents(name, max_chars // len(parts), seed + i, split))
    if len(parts) > 1:
        order = np.random.default_rng(seed).permutation(len(docs))
        docs = [docs[i] for i in order]
    return docs


def corpus_tokens(tok: Tokenizer, spec: str, max_chars: int, seed: int) -> np.ndarray:
    """A packed token stream ``[N]`` of a named corpus (documents joined by ``</s>``)."""
    return encode_documents(tok, corpus_documents(spec, max_chars, seed))


class TokenWindows:
    """Seeded random windows ``{"ids": [B, T + 1]}`` from one packed token array.

    Args:
        tokens: ``[N]`` int token ids.
        batch_size: windows per batch ``B``.
        seq_len: target length ``T``.
        seed: sampler seed.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        tokens = np.asarray(tokens, dtype=np.int32)
        if tokens.ndim != 1 or tokens.size < seq_len + 2:
            raise ValueError(
                f"need a 1-D token array longer than seq_len + 1 = {seq_len + 1}, "
                f"got shape {tokens.shape}; sample more text"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self._rng = np.random.default_rng(seed)
        self._offsets = np.arange(seq_len + 1)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        starts = self._rng.integers(0, self.tokens.size - self.seq_len - 1, size=self.batch_size)
        return {"ids": self.tokens[starts[:, None] + self._offsets[None, :]]}


def encode_instruction(
    tok: Tokenizer, question: str, answer: str, seq_len: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Encodes one instruction example, right-padded.

    Args:
        tok: tokenizer.
        question: instruction text.
        answer: response text (followed by ``</s>``).
        seq_len: target length ``T``.

    Returns:
        ``(ids [T + 1], mask [T], prompt_len)``: ``mask[t]`` is 1 where the target
        ``ids[t + 1]`` belongs to the answer (its ``</s>`` included); the sequence is cut to
        ``T + 1`` ids.
    """
    prompt = tok.encode(corpus.format_instruction(question), add_special_tokens=False).ids
    reply = tok.encode(answer, add_special_tokens=False).ids + [EOS_ID]
    ids = (prompt + reply)[: seq_len + 1]
    mask = np.zeros(seq_len, np.float32)
    mask[max(0, len(prompt) - 1) : len(ids) - 1] = 1.0
    out = np.full(seq_len + 1, PAD_ID, np.int32)
    out[: len(ids)] = ids
    return out, mask, min(len(prompt), seq_len + 1)


class InstructionBatches:
    """Seeded batches ``{"ids": [B, T + 1], "mask": [B, T]}`` of answer-masked instructions.

    Examples whose prompt leaves no room for the answer are dropped.

    Args:
        tok: tokenizer.
        pairs: ``[(question, answer), ...]``.
        batch_size: ``B``.
        seq_len: ``T``.
        seed: sampler seed.
    """

    def __init__(
        self,
        tok: Tokenizer,
        pairs: Sequence[tuple[str, str]],
        batch_size: int,
        seq_len: int,
        seed: int,
    ) -> None:
        rows = [encode_instruction(tok, q, a, seq_len) for q, a in pairs]
        rows = [r for r in rows if r[1].sum() >= 2]
        if not rows:
            raise ValueError("no instruction example fits seq_len; raise seq_len")
        self.ids = np.stack([r[0] for r in rows])
        self.mask = np.stack([r[1] for r in rows])
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        idx = self._rng.integers(0, len(self.ids), size=self.batch_size)
        return {"ids": self.ids[idx], "mask": self.mask[idx]}


def text_lines(spec: str, max_lines: int, seed: int, min_len: int = 8, max_len: int = 28) -> list[str]:
    """Distinct non-blank lines of a corpus, stripped, ``min_len <= len <= max_len``."""
    lines: list[str] = []
    seen: set[str] = set()
    for doc in corpus_documents(spec, 40 * max_lines * max_len, seed):
        for line in doc.splitlines():
            line = " ".join(line.split())
            if min_len <= len(line) <= max_len and line.isascii() and line not in seen:
                seen.add(line)
                lines.append(line)
                if len(lines) >= max_lines:
                    return lines
    return lines


class CaptionBatches:
    """Seeded image-caption batches ``{"ids", "mask", "feats"}`` for the multimodal model.

    Each example is a text line rendered as ``P`` patches (``feats [P, 96]``) followed by the
    line's tokens; the loss mask covers the line's tokens and its ``</s>``. The first input id
    is ``<s>`` so that the first text token is predicted from the image alone.

    Args:
        tok: tokenizer.
        lines: the text lines.
        batch_size: ``B``.
        seq_len: ``T``.
        num_patches: ``P``.
        seed: sampler seed.
    """

    def __init__(
        self,
        tok: Tokenizer,
        lines: Sequence[str],
        batch_size: int,
        seq_len: int,
        num_patches: int,
        seed: int,
    ) -> None:
        if not lines:
            raise ValueError("CaptionBatches needs at least one text line")
        self.feats = render_patches(lines, num_patches)
        self.ids = np.full((len(lines), seq_len + 1), PAD_ID, np.int32)
        self.mask = np.zeros((len(lines), seq_len), np.float32)
        for i, enc in enumerate(tok.encode_batch(list(lines), add_special_tokens=False)):
            ids = ([BOS_ID] + enc.ids + [EOS_ID])[: seq_len + 1]
            self.ids[i, : len(ids)] = ids
            self.mask[i, : len(ids) - 1] = 1.0
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        idx = self._rng.integers(0, len(self.ids), size=self.batch_size)
        return {"ids": self.ids[idx], "mask": self.mask[idx], "feats": self.feats[idx]}
