"""The bad-input corpus: each case builds a broken model folder and declares what awm_jax says.

A case writes, under a fresh ``root`` folder, a broken model ``root/bad`` (and, where a pair is
needed, a valid partner ``root/good``) and returns the command-line arguments. Running those
arguments through its command (``python -m awm_jax compare`` unless the case names ``audit`` or
``download``) must give exactly one line on stderr that names the file and the problem and says
what to do, the declared exit code, no traceback, within ``TIME_LIMIT_S``, and must leave every
file under ``root`` as it was.

The cases of this module are model folders; :mod:`.cases_options` adds options and output paths
(``--list``, ``--json``, ``--out``, ``--memory-gb``, TOML files) and :mod:`.cases_network` hub
endpoints that hang, trickle or answer HTML. Everything is generated: no binary fixture is
checked in (the FP8 and MPT cases copy the architecture fixtures of ``tests/fixtures``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from awm_jax.synthetic import llama_config, write_model, write_safetensors

__all__ = [
    "CASES",
    "Case",
    "Outcome",
    "TIME_LIMIT_S",
    "SENTINEL",
    "by_name",
    "environment",
    "good_model",
    "normalise",
    "prepare",
    "run_in_process",
    "snapshot",
    "write_raw_safetensors",
]

#: Longest a case may take, start to exit.
TIME_LIMIT_S = 10.0
#: A file that hostile content in a case would create if it were ever executed.
SENTINEL = "EXECUTED"
#: Files larger than this are compared by size and mtime only in snapshots.
_HASH_LIMIT = 16 * 1024 * 1024

VOCAB, HIDDEN, LAYERS, Q_DIM, K_DIM = 64, 32, 2, 32, 16
EMB = "model.embed_tokens.weight"


@dataclasses.dataclass(frozen=True)
class Case:
    """One kind of bad input.

    Attributes:
      name: identifier (test id and table key).
      input: what the input is, for the table.
      code: the exit code it must give.
      fragment: text the message must contain.
      names: the path (relative to the case root) the message must name.
      build: writes the case under ``root``; returns the CLI arguments.
      inject: optional fault injected around an in-process run (``root`` -> context manager);
        cases with one are not run in a subprocess.
      subprocess: also run through ``python -m awm_jax COMMAND`` in a subprocess.
      command: the command line run (``compare``, ``audit`` or ``download``).
      environment: optional ``root`` -> context manager yielding environment variables set for
        the run (in process and in the subprocess), e.g. a hostile hub's ``HF_ENDPOINT``.
      stdout: whether the command may print progress to stdout before failing (``download``).
    """

    name: str
    input: str
    code: int
    fragment: str
    names: str
    build: Callable[[Path], list[str]]
    inject: Callable[[Path], contextlib.AbstractContextManager] | None = None
    subprocess: bool = False
    command: str = "compare"
    environment: Callable[[Path], contextlib.AbstractContextManager[dict[str, str]]] | None = None
    stdout: bool = False


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one run printed and returned."""

    code: int
    stdout: str
    stderr: str
    seconds: float


CASES: list[Case] = []


def _case(name: str, input: str, code: int, fragment: str, names: str = "bad", *,
          inject: Callable[[Path], contextlib.AbstractContextManager] | None = None, subprocess: bool = False,
          command: str = "compare", environment: Callable | None = None, stdout: bool = False):
    def register(build: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        CASES.append(Case(name, input, code, fragment, names, build, inject, subprocess, command, environment, stdout))
        return build

    return register


def by_name(name: str) -> Case:
    """The case called ``name``."""
    return next(c for c in CASES if c.name == name)


# -- writers ---------------------------------------------------------------------------------------


def _arrays(seed: int = 0, vocab: int = VOCAB) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((vocab, HIDDEN)).astype(np.float32)
    qs = [rng.standard_normal((Q_DIM, HIDDEN)).astype(np.float32) / 6 for _ in range(LAYERS)]
    ks = [rng.standard_normal((K_DIM, HIDDEN)).astype(np.float32) / 6 for _ in range(LAYERS)]
    return emb, qs, ks


def _specs(emb, qs, ks, dtypes: dict[str, np.dtype] | None = None) -> list:
    dtypes = dtypes or {}
    named = [(EMB, emb)]
    for i, (q, k) in enumerate(zip(qs, ks)):
        named += [(f"model.layers.{i}.self_attn.q_proj.weight", q), (f"model.layers.{i}.self_attn.k_proj.weight", k)]
    return [(n, a.shape, dtypes.get(n, np.float32), (lambda a=a, n=n: a.astype(dtypes.get(n, np.float32))))
            for n, a in named]


def _model(folder: Path, seed: int = 0, *, emb=None, qs=None, ks=None, tokens=None, config: dict | None = None,
           dtypes: dict | None = None) -> Path:
    e0, q0, k0 = _arrays(seed)
    emb = e0 if emb is None else emb
    qs, ks = (q0 if qs is None else qs), (k0 if ks is None else ks)
    cfg = llama_config(VOCAB, HIDDEN, len(qs), Q_DIM // 16, K_DIM // 16, 16, dtype="float32")
    cfg.update(config or {})
    tokens = [f"tok{i}" for i in range(VOCAB)] if tokens is None else tokens
    return write_model(folder, _specs(emb, qs, ks, dtypes), cfg, tokens)


def good_model(root: Path) -> Path:
    """The valid partner model ``root/good`` (written once per root)."""
    folder = root / "good"
    if not folder.exists():
        _model(folder, seed=1)
    return folder


def write_raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> None:
    """Writes a safetensors file byte by byte: length prefix, header, data (no validation)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def _bad_header(root: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> list[str]:
    bad = root / "bad"
    bad.mkdir()
    write_raw_safetensors(bad / "model.safetensors", header, data, length)
    (bad / "config.json").write_text(json.dumps(llama_config(VOCAB, HIDDEN, LAYERS, 2, 1, 16)))
    return [str(bad), str(good_model(root))]


def _with_model(root: Path, edit: Callable[[Path], None] | None = None, **kwargs) -> list[str]:
    bad = _model(root / "bad", **kwargs)
    if edit is not None:
        edit(bad)
    return [str(bad), str(good_model(root))]


def _pair(bad: Path, root: Path) -> list[str]:
    return [str(bad), str(good_model(root))]


def _tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# -- injected faults -------------------------------------------------------------------------------


@contextlib.contextmanager
def _deny_reading(path: Path) -> Iterator[None]:
    """Makes ``os.open`` of ``path`` fail with EACCES (chmod does not stop root)."""
    real = os.open
    target = os.path.realpath(path)

    def fake_open(p, flags, *args, **kwargs):
        if os.path.realpath(p) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real(p, flags, *args, **kwargs)

    os.open = fake_open
    try:
        yield
    finally:
        os.open = real


@contextlib.contextmanager
def _without_torch() -> Iterator[None]:
    """Makes ``import torch`` fail, whether or not PyTorch is installed."""
    saved = sys.modules.get("torch", None)
    had = "torch" in sys.modules
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if had:
            sys.modules["torch"] = saved  # type: ignore[assignment]
        else:
            del sys.modules["torch"]


def _hostile_pickle(root: Path) -> bytes:
    """A protocol-0 pickle that runs a shell command when unpickled (it must never be)."""
    command = f"touch {root / SENTINEL}"
    return b"cos\nsystem\n(S'" + command.encode() + b"'\ntR."


# -- folders ----------------------------------------------------------------------------------------


@_case("missing_path", "a path that does not exist", 3, "no such file or folder", "absent")
def _missing_path(root):
    return [str(root / "absent"), str(good_model(root))]


@_case("path_is_file", "a file where the model folder is expected", 3, "is a file")
def _path_is_file(root):
    (root / "bad").write_text("not a folder\n")
    return _pair(root / "bad", root)


@_case("path_symlink_loop", "the model path is a symlink loop", 3, "symlink loop")
def _path_symlink_loop(root):
    (root / "bad").symlink_to("bad")
    return _pair(root / "bad", root)


@_case("empty_folder", "an empty folder", 3, "no model.safetensors")
def _empty_folder(root):
    (root / "bad").mkdir()
    return _pair(root / "bad", root)


@_case("several_safetensors", "two *.safetensors files and no index", 3, "no model.safetensors.index.json")
def _several(root):
    bad = _model(root / "bad")
    (bad / "model.safetensors").rename(bad / "part-a.safetensors")
    write_safetensors(bad / "part-b.safetensors", [("x", (2,), np.float32, lambda: np.zeros(2, np.float32))])
    return _pair(bad, root)


@_case("pickle_only", "only pickle weights (pytorch_model.bin holding code), no --allow-pickle", 3,
       "--allow-pickle", subprocess=True)
def _pickle_only(root):
    bad = root / "bad"
    bad.mkdir()
    (bad / "pytorch_model.bin").write_bytes(_hostile_pickle(root))
    (bad / "config.json").write_text(json.dumps(llama_config(VOCAB, HIDDEN, LAYERS, 2, 1, 16)))
    return _pair(bad, root)


@_case("pickle_without_torch", "pickle weights with --allow-pickle, PyTorch not installed", 2, "needs PyTorch",
       "bad/pytorch_model.bin", inject=lambda root: _without_torch())
def _pickle_without_torch(root):
    return _pickle_only(root) + ["--allow-pickle"]


# -- safetensors headers ----------------------------------------------------------------------------


@_case("truncated_tiny", "model.safetensors of 3 bytes (download cut short)", 3, "too short", "bad/model.safetensors")
def _truncated_tiny(root):
    bad = root / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00")
    return _pair(bad, root)


@_case("truncated_data", "model.safetensors cut 100 bytes short of its data", 3, "lies outside", "bad/model.safetensors")
def _truncated_data(root):
    def cut(bad: Path) -> None:
        with open(bad / "model.safetensors", "r+b") as f:
            f.truncate(f.seek(0, 2) - 100)

    return _with_model(root, cut)


@_case("header_past_end", "header length larger than the file", 3, "runs past the end", "bad/model.safetensors")
def _header_past_end(root):
    return _bad_header(root, b"{}", length=10**6)


@_case("header_bomb", "header length of 2^62 bytes (memory bomb)", 3, "limit", "bad/model.safetensors", subprocess=True)
def _header_bomb(root):
    return _bad_header(root, b"{}", length=2**62)


@_case("header_not_json", "header that is not JSON", 3, "is not valid JSON", "bad/model.safetensors")
def _header_not_json(root):
    return _bad_header(root, b"{not json at all")


@_case("header_not_utf8", "header that is not UTF-8", 3, "not valid UTF-8", "bad/model.safetensors")
def _header_not_utf8(root):
    return _bad_header(root, b'{"\xff\xfe": 1}')


@_case("header_deep_nesting", "header of 100,000 nested JSON arrays", 3, "nested too deeply", "bad/model.safetensors")
def _header_deep(root):
    return _bad_header(root, b"[" * 100_000 + b"]" * 100_000)


@_case("header_huge_number", "header with a 5,000-digit integer", 3, "too many digits", "bad/model.safetensors")
def _header_huge_number(root):
    return _bad_header(root, b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
                       b"\0" * 4)


@_case("header_not_object", "header that is a JSON list", 3, "not a JSON object", "bad/model.safetensors")
def _header_not_object(root):
    return _bad_header(root, b"[1, 2]")


@_case("entry_incomplete", "tensor entry without shape or data_offsets", 3, "lacks dtype/shape/data_offsets",
       "bad/model.safetensors")
def _entry_incomplete(root):
    return _bad_header(root, {"x": {"dtype": "F32"}})


@_case("offsets_overlap", "two tensors whose data overlap", 3, "overlap", "bad/model.safetensors")
def _offsets_overlap(root):
    return _bad_header(root, {"x": _tensor("F32", [2], 0, 8), "y": _tensor("F32", [2], 4, 12)}, b"\0" * 12)


@_case("offsets_out_of_range", "tensor offsets beyond the end of the file", 3, "lies outside", "bad/model.safetensors")
def _offsets_out_of_range(root):
    return _bad_header(root, {"x": _tensor("F32", [4], 0, 16)}, b"\0" * 8)


@_case("offsets_mismatch", "tensor offsets not matching dtype x shape", 3, "needs", "bad/model.safetensors")
def _offsets_mismatch(root):
    return _bad_header(root, {"x": _tensor("F32", [3], 0, 8)}, b"\0" * 8)


@_case("unsupported_dtype", "a query projection of unsupported dtype (Q4; unread tensors of unknown dtype are accepted)", 3,
       "unsupported dtype", "bad/model.safetensors")
def _unsupported_dtype(root):
    def retype(bad: Path) -> None:
        path = bad / "model.safetensors"
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "Q4"
        write_raw_safetensors(path, header, raw[8 + n:])

    return _with_model(root, retype)


@_case("negative_shape", "a tensor with a negative dimension", 3, "malformed shape", "bad/model.safetensors")
def _negative_shape(root):
    return _bad_header(root, {"x": _tensor("F32", [-2], 0, 8)}, b"\0" * 8)


@_case("absurd_shape", "a tensor of 2^40 x 2^40 floats in a small file (memory bomb)", 3, "lies outside",
       "bad/model.safetensors")
def _absurd_shape(root):
    return _bad_header(root, {EMB: _tensor("F32", [2**40, 2**40], 0, 2**82)}, b"\0" * 64)


@_case("sparse_memory_bomb", "a consistent header and a sparse 8 TiB file: an embedding larger than memory", 3,
       "more than the", "bad/model.safetensors", subprocess=True)
def _sparse_memory_bomb(root):
    rows = 2**43 // (HIDDEN * 4)
    _, qs, ks = _arrays()
    header, offset, blobs = {}, 0, []
    for name, arr in [(f"model.layers.{i}.self_attn.{p}_proj.weight", m) for i in range(LAYERS)
                      for p, m in (("q", qs[i]), ("k", ks[i]))]:
        header[name] = _tensor("F32", list(arr.shape), offset, offset + arr.nbytes)
        offset += arr.nbytes
        blobs.append(arr.tobytes())
    header[EMB] = _tensor("F32", [rows, HIDDEN], offset, offset + rows * HIDDEN * 4)
    raw = json.dumps(header).encode()
    bad = root / "bad"
    bad.mkdir()
    path = bad / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
        f.truncate(8 + len(raw) + offset + rows * HIDDEN * 4)  # sparse: no disk blocks
    config = llama_config(VOCAB, HIDDEN, LAYERS, 2, 1, 16)
    del config["vocab_size"]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "tokenizer.json").write_text((good_model(root) / "tokenizer.json").read_text())
    return _pair(bad, root)


# -- sharded checkpoints ----------------------------------------------------------------------------


def _indexed(root: Path, weight_map: dict | str) -> list[str]:
    bad = _model(root / "bad")
    text = weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    (bad / "model.safetensors.index.json").write_text(text)
    return _pair(bad, root)


def _full_map(shard: str = "model.safetensors") -> dict:
    names = [EMB] + [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(LAYERS) for p in "qk"]
    return {n: shard for n in names}


@_case("index_not_json", "model.safetensors.index.json that is not JSON", 3, "is not valid JSON",
       "bad/model.safetensors.index.json")
def _index_not_json(root):
    return _indexed(root, '{"weight_map": ')


@_case("index_no_weight_map", "an index without a weight_map", 3, "not a valid index", "bad/model.safetensors.index.json")
def _index_no_weight_map(root):
    return _indexed(root, json.dumps({"metadata": {}}))


@_case("index_empty", "an index whose weight_map is empty", 3, "names no shards", "bad/model.safetensors.index.json")
def _index_empty(root):
    return _indexed(root, {})


@_case("index_missing_shard", "an index naming a shard that is missing", 3, "which is missing",
       "bad/model.safetensors.index.json")
def _index_missing_shard(root):
    return _indexed(root, _full_map("model-00002-of-00002.safetensors"))


@_case("index_missing_tensor", "an index naming a tensor its shards do not hold", 3, "its shards do not hold",
       "bad/model.safetensors.index.json")
def _index_missing_tensor(root):
    return _indexed(root, {**_full_map(), "lm_head.weight": "model.safetensors"})


@_case("index_dotdot", "an index naming ../model.safetensors (outside the folder, present there)", 3,
       "leaves the model folder", "bad/model.safetensors.index.json", subprocess=True)
def _index_dotdot(root):
    _model(root / "elsewhere")
    (root / "model.safetensors").write_bytes((root / "elsewhere" / "model.safetensors").read_bytes())
    return _indexed(root, _full_map("../model.safetensors"))


@_case("index_absolute", "an index naming an absolute path", 3, "leaves the model folder",
       "bad/model.safetensors.index.json")
def _index_absolute(root):
    return _indexed(root, _full_map("/etc/model.safetensors"))


# -- files that are not regular files ---------------------------------------------------------------


@_case("weights_are_folder", "model.safetensors is a folder", 3, "is a folder", "bad/model.safetensors")
def _weights_folder(root):
    bad = root / "bad"
    (bad / "model.safetensors").mkdir(parents=True)
    return _pair(bad, root)


@_case("weights_fifo", "model.safetensors is a named pipe (reading would block)", 3, "named pipe",
       "bad/model.safetensors", subprocess=True)
def _weights_fifo(root):
    bad = root / "bad"
    bad.mkdir()
    os.mkfifo(bad / "model.safetensors")
    (bad / "config.json").write_text("{}")
    return _pair(bad, root)


@_case("weights_symlink_loop", "model.safetensors is a symlink to itself", 3, "symlink loop", "bad/model.safetensors")
def _weights_loop(root):
    bad = root / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to("model.safetensors")
    return _pair(bad, root)


@_case("weights_broken_symlink", "model.safetensors is a symlink to a missing file", 3, "broken symlink",
       "bad/model.safetensors")
def _weights_broken(root):
    bad = root / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to("blobs/0123abcd")
    return _pair(bad, root)


@_case("weights_unreadable", "model.safetensors that may not be read (permission denied)", 3, "permission denied",
       "bad/model.safetensors", inject=lambda root: _deny_reading(root / "bad" / "model.safetensors"))
def _weights_unreadable(root):
    return _with_model(root)


@_case("config_fifo", "config.json is a named pipe (reading would block)", 3, "named pipe", "bad/config.json")
def _config_fifo(root):
    def fifo(bad: Path) -> None:
        (bad / "config.json").unlink()
        os.mkfifo(bad / "config.json")

    return _with_model(root, fifo)


# -- config.json ------------------------------------------------------------------------------------


def _config_text(root: Path, text: str) -> list[str]:
    return _with_model(root, lambda bad: (bad / "config.json").write_text(text))


@_case("config_not_json", "config.json that is not JSON", 3, "is not valid JSON", "bad/config.json")
def _config_not_json(root):
    return _config_text(root, '{"hidden_size": 32,')


@_case("config_not_object", "config.json that is a JSON string", 3, "not a JSON object", "bad/config.json")
def _config_not_object(root):
    return _config_text(root, '"llama"')


@_case("config_wrong_type", "config.json with hidden_size \"32\" (a string)", 3, "expected one non-negative integer",
       "bad/config.json")
def _config_wrong_type(root):
    return _with_model(root, config={"hidden_size": "32"})


@_case("config_absurd", "config.json with num_hidden_layers 10^30", 3, "outside [0,", "bad/config.json")
def _config_absurd(root):
    return _with_model(root, config={"num_hidden_layers": 10**30})


@_case("config_contradicts_hidden", "config.json hidden_size 48, embedding of 32 columns", 4, "contradicts the tensors")
def _config_contradicts_hidden(root):
    return _with_model(root, config={"hidden_size": 48})


@_case("config_contradicts_layers", "config.json declares 5 layers, the tensors hold 2", 4, "declares 5 layers")
def _config_contradicts_layers(root):
    return _with_model(root, config={"num_hidden_layers": 5})


@_case("zero_layers_config", "config.json declares 0 layers, the tensors hold 2", 4, "declares 0 layers")
def _zero_layers_config(root):
    return _with_model(root, config={"num_hidden_layers": 0})


@_case("zero_layers_tensors", "an embedding and no decoder layers", 4, "no known layout fits")
def _zero_layers_tensors(root):
    e, _, _ = _arrays()
    return _with_model(root, qs=[], ks=[], emb=e, config={"num_hidden_layers": 0})


@_case("unknown_architecture", "tensor names of no known architecture", 4, "no known layout fits")
def _unknown_architecture(root):
    bad = root / "bad"
    write_model(bad, [("encoder.block.0.weight", (4, 4), np.float32, lambda: np.ones((4, 4), np.float32))],
                {"architectures": ["MysteryModel"]}, [f"tok{i}" for i in range(VOCAB)])
    return _pair(bad, root)


@_case("integer_weights", "query projections stored as int8 (quantised)", 4, "quantised")
def _integer_weights(root):
    e, qs, ks = _arrays()
    qs = [np.clip(q * 100, -127, 127).astype(np.int8) for q in qs]
    return _with_model(root, emb=e, qs=qs, ks=ks,
                       dtypes={f"model.layers.{i}.self_attn.q_proj.weight": np.int8 for i in range(LAYERS)})


# -- weights ----------------------------------------------------------------------------------------


@_case("nan_query", "a NaN in layer 1's query projection", 6, "NaN", subprocess=True)
def _nan_query(root):
    e, qs, ks = _arrays()
    qs[1][3, 4] = np.nan
    return _with_model(root, emb=e, qs=qs, ks=ks)


@_case("inf_embedding", "an Inf in the embedding", 6, "NaN/Inf")
def _inf_embedding(root):
    e, qs, ks = _arrays()
    e[5, 7] = np.inf
    return _with_model(root, emb=e, qs=qs, ks=ks)


@_case("zero_query", "an all-zero query projection", 6, "all zeros")
def _zero_query(root):
    e, qs, ks = _arrays()
    qs[1][:] = 0
    return _with_model(root, emb=e, qs=qs, ks=ks)


@_case("zero_embedding", "an all-zero embedding", 6, "all zeros")
def _zero_embedding(root):
    e, qs, ks = _arrays()
    return _with_model(root, emb=np.zeros_like(e), qs=qs, ks=ks)


# -- vocabularies -----------------------------------------------------------------------------------


def _tokenizer(root: Path, text: str | bytes, name: str = "tokenizer.json") -> list[str]:
    def write(bad: Path) -> None:
        (bad / "tokenizer.json").unlink()
        target = bad / name
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return _with_model(root, write)


def _vocab_json(vocab: dict) -> str:
    return json.dumps({"model": {"type": "WordLevel", "vocab": vocab, "unk_token": "tok0"}})


@_case("no_tokenizer", "no tokenizer file", 5, "no tokenizer.json")
def _no_tokenizer(root):
    return _with_model(root, lambda bad: (bad / "tokenizer.json").unlink())


@_case("tokenizer_not_json", "tokenizer.json that is not JSON", 5, "is not valid JSON", "bad/tokenizer.json")
def _tokenizer_not_json(root):
    return _tokenizer(root, '{"model": {"vocab": {')


@_case("tokenizer_not_utf8", "tokenizer.json with tokens that are not UTF-8", 5, "not valid UTF-8", "bad/tokenizer.json",
       subprocess=True)
def _tokenizer_not_utf8(root):
    text = _vocab_json({f"tok{i}": i for i in range(VOCAB)}).encode().replace(b"tok7", b"tok\xc3\x28")
    return _tokenizer(root, text)


@_case("tokenizer_no_vocab", "tokenizer.json without model.vocab", 5, "model.vocab", "bad/tokenizer.json")
def _tokenizer_no_vocab(root):
    return _tokenizer(root, json.dumps({"model": {"type": "BPE"}}))


@_case("tokenizer_negative_id", "tokenizer.json with a negative id", 5, "non-negative id", "bad/tokenizer.json")
def _tokenizer_negative_id(root):
    return _tokenizer(root, _vocab_json({"tok0": 0, "tok1": -1}))


@_case("tokenizer_huge_id", "tokenizer.json with an id of 2^70", 5, "above", "bad/tokenizer.json")
def _tokenizer_huge_id(root):
    return _tokenizer(root, _vocab_json({"tok0": 0, "tok1": 2**70}))


@_case("duplicate_ids", "tokenizer.json giving every id to two tokens", 5, "share an id", "bad/tokenizer.json")
def _duplicate_ids(root):
    return _tokenizer(root, _vocab_json({f"tok{i}": i // 2 for i in range(VOCAB)}))


@_case("no_shared_vocabulary", "two vocabularies with no token in common", 5, "share no tokens", "bad/tokenizer.json")
def _no_shared(root):
    return _with_model(root, tokens=[f"other{i}" for i in range(VOCAB)])


@_case("embedding_fewer_rows", "tokenizer ids beyond the embedding (64 tokens, 16 rows)", 5, "beyond the 16 rows",
       "bad/tokenizer.json")
def _embedding_fewer_rows(root):
    e, qs, ks = _arrays()
    return _with_model(root, emb=e[:16], qs=qs, ks=ks, config={"vocab_size": 16})


@_case("tokenizer_fifo", "tokenizer.json is a named pipe", 5, "named pipe", "bad/tokenizer.json")
def _tokenizer_fifo(root):
    def fifo(bad: Path) -> None:
        (bad / "tokenizer.json").unlink()
        os.mkfifo(bad / "tokenizer.json")

    return _with_model(root, fifo)


@_case("tiktoken_malformed", "a *.tiktoken file that is not 'base64 rank' lines", 5, "not a tiktoken rank file",
       "bad/cl100k.tiktoken")
def _tiktoken_malformed(root):
    return _tokenizer(root, "IQ== 0\nnot base64 at all!\n", "cl100k.tiktoken")


@_case("sentencepiece_garbage", "tokenizer.model of random bytes", 5, "not a readable SentencePiece model",
       "bad/tokenizer.model")
def _sentencepiece_garbage(root):
    return _tokenizer(root, np.random.default_rng(0).bytes(512), "tokenizer.model")


# -- running ----------------------------------------------------------------------------------------


def prepare(case: Case, root: Path) -> list[str]:
    """Builds ``case`` under ``root``; returns the full CLI arguments (caches inside ``root/cache``)."""
    args = [str(a) for a in case.build(root)]
    (root / "cache").mkdir(exist_ok=True)
    if case.command == "download":
        return args + ["--hub-cache", str(root / "cache" / "hub")]
    return args + ["--cache-dir", str(root / "cache")]


@contextlib.contextmanager
def environment(case: Case, root: Path) -> Iterator[dict[str, str]]:
    """The case's environment variables (``{}`` for most), valid while the context is open."""
    if case.environment is None:
        yield {}
        return
    with case.environment(root) as variables:
        yield variables


@contextlib.contextmanager
def _environ(variables: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_in_process(case: Case, root: Path, args: list[str]) -> Outcome:
    """Runs the case's command (``awm_jax.cli.<command>.main(args)``) here, with its injected
    fault and environment."""
    import importlib

    main = importlib.import_module(f"awm_jax.cli.{case.command}").main
    inject = case.inject(root) if case.inject is not None else contextlib.nullcontext()
    out, err = io.StringIO(), io.StringIO()
    with environment(case, root) as variables, _environ(variables):
        t = time.perf_counter()
        with inject, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        seconds = time.perf_counter() - t
    return Outcome(code, out.getvalue(), err.getvalue(), seconds)


def normalise(message: str, root: Path) -> str:
    """The error line without its prefix, case folder and machine-dependent figures."""
    text = message.strip()
    text = text.removeprefix("awm_jax: error: ")
    for prefix in {str(root.resolve()) + os.sep, str(root) + os.sep}:
        text = text.replace(prefix, "")
    text = re.sub(r"http://127\.0\.0\.1:[0-9]+", "http://127.0.0.1:PORT", text)
    return re.sub(r"the [0-9.]+ GiB of memory here", "the N GiB of memory here", text)


def snapshot(root: Path) -> dict[str, tuple]:
    """Names, types, sizes, mtimes and contents of everything under ``root`` except ``cache``.

    Links are not followed and only regular files are read (a FIFO would block).
    """
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root and "cache" in dirnames:
            dirnames.remove("cache")
        for name in dirnames + filenames:
            path = here / name
            st = os.lstat(path)
            content: object = None
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode) and st.st_size <= _HASH_LIMIT:
                try:
                    content = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    content = "unreadable"
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, content)
    out["."] = (0, 0, os.lstat(root).st_mtime_ns, None)
    return out


from . import cases_options, cases_network  # noqa: E402,F401  (they register their cases here)

if len({c.name for c in CASES}) != len(CASES):  # pragma: no cover - a guard on the corpus itself
    raise RuntimeError("duplicate case names in the bad-input corpus")
