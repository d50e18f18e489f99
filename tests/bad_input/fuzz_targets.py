"""Property-based fuzzing targets for the parsers of untrusted files.

Each :class:`Target` pairs a hypothesis strategy (structured inputs, valid ones perturbed, and
raw bytes) with a function that writes the example into a fresh model folder and runs the
real reader on it. The property: the reader either succeeds with a result that satisfies the
format's invariants, or raises one of the documented :class:`~awm_jax.errors.AWMError`
subclasses. Any other exception, a hang or a crash is a bug. The fingerprint cache target
(``tests/bad_input/fuzz_cache.py``) allows no error at all: a damaged entry is healed.

Used by ``tests/test_fuzz.py`` (a short run) and ``benchmarks/fuzz.py`` (the long run).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from hypothesis import strategies as st

from awm_jax.io.checkpoint import MAX_CONFIG_INT, SAFETENSORS_DTYPES, Checkpoint
from awm_jax.errors import AWMError, CheckpointError
from awm_jax.synthetic import write_safetensors
from awm_jax.io.vocab import MAX_DUPLICATE_FRACTION, MAX_TOKEN_ID, load_vocabulary

from .fuzz_cache import cache_entries, run_cache_entry

__all__ = ["TARGETS", "Target", "ALLOWED_ERRORS", "run_example"]

#: The documented errors a reader may raise on bad input.
ALLOWED_ERRORS = (AWMError,)


@dataclasses.dataclass(frozen=True)
class Target:
    """A reader under fuzzing.

    Attributes:
      name: identifier.
      strategy: generates one example.
      run: writes the example into the given empty folder and reads it, checking invariants;
        returns ``None`` (read) or the name of another outcome (``"healed"``).
      in_tests: part of the short run in the test suite (else only of the long run).
      allowed: the errors that count as a documented refusal (none: every error is a bug).
    """

    name: str
    strategy: st.SearchStrategy
    run: Callable[[Path, Any], str | None]
    in_tests: bool = True
    allowed: tuple[type[BaseException], ...] = ALLOWED_ERRORS


def run_example(target: Target, folder: Path, example: Any) -> str:
    """Runs one example; returns ``"ok"``, ``"refused"`` or the target's own outcome (``"healed"``);
    other exceptions propagate."""
    folder.mkdir(parents=True)
    try:
        outcome = target.run(folder, example)
    except target.allowed as e:
        message = str(e)
        assert message and "\n" not in message, f"error message is not one line: {message!r}"
        return "refused"
    return outcome or "ok"


# -- building blocks ------------------------------------------------------------------------------

#: Characters for generated strings: ASCII plus the awkward ones tokenizers meet (lone
#: surrogates, NUL, the SentencePiece and byte-level markers, multi-byte code points).
_chars = st.one_of(st.characters(max_codepoint=0x7F),
                   st.sampled_from(["\ud800", "\udfff", "\x00", "\u2581", "\u0120", "\u00e9", "\U0001F600", "\ufeff"]))


def _text(max_size: int) -> st.SearchStrategy:
    return st.text(alphabet=_chars, max_size=max_size)


_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | _text(12))
json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _mutated(draw, raw: bytes) -> bytes:
    """``raw`` with a few byte flips, deletions, insertions, or cut short."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete" and data:
            del data[at]
        elif op == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        elif op == "cut":
            del data[at:]
    return bytes(data)


def _encoded(value_strategy: st.SearchStrategy) -> st.SearchStrategy:
    """JSON text of generated values (3 in 5), mutated JSON text (1 in 5), or raw bytes (1 in 5)."""
    as_json = value_strategy.map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json, as_json, as_json.flatmap(_mutated), st.binary(max_size=200))


# -- safetensors headers --------------------------------------------------------------------------

_FLOAT_NAMES = ["F64", "F32", "F16", "BF16"]
_dtype_names = st.one_of(st.sampled_from(list(SAFETENSORS_DTYPES)), st.sampled_from(["Q4", "f32", "", "F32 "]), json_values)
_tensor_names = st.one_of(st.sampled_from(["__metadata__", "model.embed_tokens.weight", "x", ""]), _text(16))


@st.composite
def safetensors_files(draw) -> tuple[bytes, int | None]:
    """A safetensors file: ``(bytes, header length override or None)``.

    Half the headers are consistent (contiguous offsets matching dtype x shape, data present)
    and then perhaps perturbed in one field; the rest are arbitrary JSON or bytes.
    """
    kind = draw(st.sampled_from(["consistent", "consistent", "wild", "raw"]))
    data = b""
    if kind == "raw":
        header = draw(st.binary(max_size=200))
    else:
        entries: dict[str, Any] = {}
        offset = 0
        for name in draw(st.lists(_tensor_names, max_size=4, unique=True)):
            if kind == "wild":  # arbitrary values, half the time in the three expected fields
                entries[name] = draw(st.one_of(json_values, st.fixed_dictionaries({
                    "dtype": _dtype_names,
                    "shape": st.one_of(st.lists(st.integers(-3, 2**64), max_size=3), json_values),
                    "data_offsets": st.one_of(st.lists(st.integers(-8, 600), min_size=2, max_size=2), json_values),
                })))
                continue
            dtype = draw(st.sampled_from(list(SAFETENSORS_DTYPES)))
            shape = draw(st.lists(st.integers(0, 5), max_size=3))
            size = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
            entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        if entries and kind == "consistent":
            name = draw(st.sampled_from(sorted(entries)))
            field = draw(st.sampled_from(["none", "none", "dtype", "shape", "data_offsets", "extent"]))
            if field == "dtype":
                entries[name]["dtype"] = draw(_dtype_names)
            elif field == "shape":
                entries[name]["shape"] = draw(st.one_of(st.lists(st.integers(-3, 2**64), max_size=3), json_values))
            elif field == "data_offsets":
                entries[name]["data_offsets"] = draw(st.one_of(st.lists(st.integers(-8, 2**65), max_size=3), json_values))
            elif field == "extent":
                offset += draw(st.integers(-16, 16))
        if draw(st.booleans()):
            entries["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), json_values))
        header = json.dumps(entries).encode()
        if draw(st.integers(0, 4)) == 0:
            header = draw(_mutated(header))
        data = draw(st.binary(min_size=max(offset, 0), max_size=max(offset, 0))) if offset <= 512 else b"\0" * offset
    length = draw(st.one_of(st.none(), st.none(), st.integers(0, 2**64 - 1), st.integers(0, 300)))
    cut = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 400)))
    raw = struct.pack("<Q", len(header) if length is None else length) + header + data
    return (raw if cut is None else raw[:cut]), length


def _run_safetensors(folder: Path, example: tuple[bytes, int | None]) -> None:
    raw, _ = example
    (folder / "model.safetensors").write_bytes(raw)
    ckpt = Checkpoint(folder)
    size = len(raw)
    for name, info in ckpt.tensors.items():
        assert isinstance(name, str) and isinstance(info.dtype, str) and info.dtype
        assert 8 <= info.start and info.start + info.nbytes <= size
        if info.dtype not in SAFETENSORS_DTYPES:  # accepted in the header, refused only when read
            try:
                ckpt.read(name)
            except CheckpointError as e:
                assert "unsupported dtype" in str(e)
            else:
                raise AssertionError(f"tensor {name!r} of dtype {info.dtype!r} was read")
            continue
        assert info.nbytes == math.prod(info.shape) * SAFETENSORS_DTYPES[info.dtype].itemsize
        array = ckpt.read(name)
        assert array.shape == info.shape and array.dtype == SAFETENSORS_DTYPES[info.dtype]
        assert array.tobytes() == raw[info.start: info.start + info.nbytes]
        if info.shape:
            assert ckpt.read(name, slice(1, None)).shape == (max(info.shape[0] - 1, 0),) + info.shape[1:]


# -- index files ----------------------------------------------------------------------------------

_SHARD = "model-00001-of-00001.safetensors"
_shard_names = st.one_of(
    st.sampled_from([_SHARD, "../outside.safetensors", "/etc/outside.safetensors", "", ".", "sub/../" + _SHARD,
                     "missing.safetensors", "sub/nested.safetensors", "..", "a\\..\\b"]),
    _text(20),
)
_index_values = st.one_of(
    st.fixed_dictionaries({"metadata": json_values, "weight_map": st.dictionaries(
        st.just("c"), _shard_names, max_size=1).map(lambda extra: {"a": _SHARD, "b": _SHARD, **extra})}),
    st.fixed_dictionaries({"weight_map": st.dictionaries(st.sampled_from(["a", "b", "c"]) | _text(6),
                                                         _shard_names, max_size=4)}),
    st.fixed_dictionaries({"weight_map": json_values}),
    json_values,
)


def _run_index(folder: Path, raw: bytes) -> None:
    write_safetensors(folder / _SHARD, [(n, (2, 3), np.float32, lambda: np.ones((2, 3), np.float32)) for n in "ab"])
    (folder / "sub").mkdir()
    write_safetensors(folder / "sub" / "nested.safetensors", [("c", (1,), np.float32, lambda: np.ones(1, np.float32))])
    outside = folder.parent / (folder.name + "-outside")
    outside.mkdir()
    write_safetensors(outside / "outside.safetensors", [("c", (1,), np.float32, lambda: np.ones(1, np.float32))])
    (folder / "model.safetensors.index.json").write_bytes(raw)
    ckpt = Checkpoint(folder)
    weight_map = json.loads(raw)["weight_map"]
    for f in ckpt.files:
        relative = PurePosixPath(f.relative_to(ckpt.root).as_posix())
        assert ".." not in relative.parts, f"read a file outside the folder: {f}"
    assert set(weight_map) <= set(ckpt.tensors)


# -- tokenizer files ------------------------------------------------------------------------------

_ids = st.one_of(st.integers(-2, 40), st.integers(-(2**70), 2**70), _scalars)
#: Vocabularies with distinct ids (most real ones), which are read rather than refused.
_unique_vocab = st.lists(_text(6), min_size=1, max_size=30, unique=True).map(lambda ts: {t: i for i, t in enumerate(ts)})
_tokenizer_values = st.one_of(
    st.fixed_dictionaries({
        "model": st.fixed_dictionaries({"vocab": st.one_of(
            _unique_vocab,
            st.dictionaries(_text(6), st.integers(0, 40), min_size=1, max_size=30),
            st.dictionaries(_text(6), _ids, max_size=8),
            st.lists(st.one_of(st.tuples(_text(6), st.floats(-10, 0)).map(list), json_values), max_size=8),
            json_values,
        )}),
        "added_tokens": st.one_of(
            st.just([]),
            st.lists(st.fixed_dictionaries({"id": _ids, "content": st.one_of(_text(6), _scalars)}), max_size=4),
            json_values,
        ),
    }),
    json_values,
)


def _check_vocabulary(folder: Path) -> None:
    vocab = load_vocabulary(folder)
    assert len(vocab.tokens) > 0
    for token, i in vocab.tokens.items():
        assert isinstance(token, str) and isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_TOKEN_ID
    assert vocab.duplicate_ids == len(vocab.tokens) - len(set(vocab.tokens.values()))
    assert vocab.duplicate_ids <= MAX_DUPLICATE_FRACTION * len(vocab.tokens)


def _run_tokenizer_json(folder: Path, raw: bytes) -> None:
    (folder / "tokenizer.json").write_bytes(raw)
    _check_vocabulary(folder)


def _run_vocab_json(folder: Path, raw: bytes) -> None:
    (folder / "vocab.json").write_bytes(raw)
    _check_vocabulary(folder)


@st.composite
def tokenizer_models(draw) -> tuple[str, bytes]:
    """A ``tokenizer.model`` or ``*.tiktoken`` file: tiktoken-like lines, perturbed, or bytes."""
    name = draw(st.sampled_from(["tokenizer.model", "cl100k.tiktoken"]))
    lines = draw(st.lists(st.tuples(st.binary(max_size=6), st.one_of(st.integers(0, 50), st.integers(-5, 2**70))),
                          max_size=12))
    text = b"\n".join(base64.b64encode(t) + b" " + str(r).encode() for t, r in lines)
    raw = draw(st.one_of(st.just(text), _mutated(text), st.binary(max_size=300)))
    return name, raw


def _run_tokenizer_model(folder: Path, example: tuple[str, bytes]) -> None:
    name, raw = example
    (folder / name).write_bytes(raw)
    _check_vocabulary(folder)


# -- config.json ----------------------------------------------------------------------------------

_size_keys = st.sampled_from(["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                              "head_dim", "vocab_size", "n_embd", "text_config", "architectures", "model_type"])
_config_values = st.one_of(st.dictionaries(_size_keys, st.one_of(_scalars, json_values), max_size=5), json_values)


def _run_config(folder: Path, raw: bytes) -> None:
    write_safetensors(folder / "model.safetensors", [("x", (2,), np.float32, lambda: np.ones(2, np.float32))])
    (folder / "config.json").write_bytes(raw)
    config = Checkpoint(folder).config
    assert isinstance(config, dict)
    for scope in [config] + [config[k] for k in ("text_config", "llm_config", "language_config")
                             if isinstance(config.get(k), dict)]:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "vocab_size", "n_embd"):
            value = scope.get(key)
            assert value is None or (type(value) is int and 0 <= value <= MAX_CONFIG_INT)


def _run_config_layout(folder: Path, raw: bytes) -> None:
    """A valid Llama checkpoint with a fuzzed config.json, through layout detection and one layer read."""
    from awm_jax.layouts import detect
    from awm_jax.synthetic import llama_config, write_model

    rng = np.random.default_rng(0)
    specs = [("model.embed_tokens.weight", (16, 32), np.float32, lambda: rng.standard_normal((16, 32)).astype(np.float32))]
    for i in range(2):
        for p, rows in (("q", 32), ("k", 16)):
            specs.append((f"model.layers.{i}.self_attn.{p}_proj.weight", (rows, 32), np.float32,
                          lambda rows=rows: rng.standard_normal((rows, 32)).astype(np.float32)))
    write_model(folder, specs, llama_config(16, 32, 2, 2, 1, 16))
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    if isinstance(config, dict):  # fuzzed keys over a valid config, so detection gets past the first check
        base = json.loads((folder / "config.json").read_text())
        raw = json.dumps({**base, **config}).encode()
    (folder / "config.json").write_bytes(raw)
    resolved = detect(Checkpoint(folder))
    q, k = resolved.read_qk(0)
    assert q.shape[1] == k.shape[1] == resolved.hidden_size


_layout_configs = st.dictionaries(
    st.sampled_from(["architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "text_config", "quantization_config", "tie_word_embeddings",
                     "multi_query", "attn_config", "num_nextn_predict_layers", "kv_channels", "multi_query_group_num"]),
    st.one_of(_scalars, json_values, st.sampled_from([["LlamaForCausalLM"], ["GPTNeoXForCausalLM"], ["ChatGLMModel"],
                                                       ["Phi3ForCausalLM"], ["DeepseekV3ForCausalLM"], "llama", 0, 1, 2,
                                                       16, 32, 64])),
    max_size=5,
)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("safetensors_header", safetensors_files(), _run_safetensors),
        Target("index_file", _encoded(_index_values), _run_index),
        Target("tokenizer_json", _encoded(_tokenizer_values), _run_tokenizer_json),
        Target("vocab_json", _encoded(st.one_of(_unique_vocab, st.dictionaries(_text(6), _ids, max_size=8), json_values)),
               _run_vocab_json),
        Target("tokenizer_model", tokenizer_models(), _run_tokenizer_model),
        Target("config_json", _encoded(_config_values), _run_config),
        Target("config_layout", _encoded(_layout_configs), _run_config_layout, in_tests=False),
        Target("cache_entry", cache_entries(), run_cache_entry, allowed=()),
    ]
}

from .fuzz_journal import journal_target  # noqa: E402  (the progress file's target lives apart)

TARGETS["audit_journal"] = journal_target()
