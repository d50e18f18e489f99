"""Checkpoint reading: safetensors folders, read lazily one tensor at a time.

A checkpoint is a folder holding either a single ``model.safetensors`` or a sharded set
described by ``model.safetensors.index.json`` (exactly the shards the index names are read;
other ``*.safetensors`` files in the folder, such as adapters or duplicates, are ignored).
Opening a checkpoint reads and validates only the JSON headers; tensor data is read on
request, one tensor (or a block of rows) at a time, so peak memory is bounded by the largest
tensor the method needs, never by the checkpoint size. The embedding, read once per comparison
and used a block of shared rows at a time, is instead memory-mapped read-only (:meth:`Checkpoint.map`):
its pages come from the page cache and count against no allocation.

Model folders come from strangers, so every file is treated as hostile:

* nothing in the folder is executed, and nothing is written to it;
* pickle weights (``pytorch_model.bin``, ``*.pt``...) are refused unless loading them is
  asked for explicitly (``allow_pickle=True``, the CLI's ``--allow-pickle``), and even then
  they are read only through ``torch.load(weights_only=True)``, which refuses pickled code;
* a file is opened only after it is known to be a regular file (a FIFO, a device, a folder or
  a symlink loop standing where a file is expected is refused, so nothing blocks);
* every size read from a file is checked before anything is allocated: safetensors headers
  (``MAX_HEADER_BYTES``), JSON files (``MAX_JSON_BYTES``), tensor extents against the file
  size, tensor reads and maps against the memory of the machine, sizes in ``config.json``
  (``MAX_CONFIG_INT``).

Every problem raises :class:`~awm_jax.errors.CheckpointError` with a one-line message naming
the file and the problem and saying what to do.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import functools
import itertools
import json
import math
import os
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy; safetensors needs it)
import numpy as np

from awm_jax.errors import AWMError, CheckpointError, UsageError

__all__ = [
    "Checkpoint",
    "TensorInfo",
    "check_readable",
    "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES",
    "MAX_CONFIG_INT",
    "CONFIG_SIZE_KEYS",
    "SAFETENSORS_DTYPES",
    "memory_limit",
    "open_regular",
    "parse_json",
    "pickle_loading",
    "read_json",
]

#: Largest safetensors JSON header accepted, checked before anything is allocated.
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Largest JSON file (config, index, tokenizer) read from a model folder.
MAX_JSON_BYTES = 512 * 1024 * 1024
#: Largest size accepted in ``config.json`` (hidden size, layer and head counts...).
MAX_CONFIG_INT = 2**31 - 1

#: safetensors dtype name -> numpy dtype.
SAFETENSORS_DTYPES: Mapping[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "U16": np.dtype(np.uint16),
    "U32": np.dtype(np.uint32),
    "U64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}

#: ``config.json`` keys (in the top level and the language model's sub-config) that must be
#: one non-negative integer: the architecture layouts compute with them.
CONFIG_SIZE_KEYS = (
    "hidden_size", "n_embd", "d_model", "dim",
    "num_hidden_layers", "n_layer", "num_layers", "n_layers",
    "num_attention_heads", "n_head", "num_heads", "n_heads",
    "num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv", "multi_query_group_num",
    "head_dim", "kv_channels", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "num_nextn_predict_layers", "num_mtp_layers",
    "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts",
    "vocab_size", "intermediate_size",
)
#: Sub-configs holding the language model's sizes (multimodal checkpoints).
_CONFIG_SCOPES = ("text_config", "llm_config", "language_config")

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
PICKLE_SINGLE_FILE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Pickles found beside weights that are not weights (trainer state).
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")

_ALLOW_PICKLE: contextvars.ContextVar[bool] = contextvars.ContextVar("awm_jax_allow_pickle", default=False)


@contextlib.contextmanager
def pickle_loading(allowed: bool = True) -> Iterator[None]:
    """Sets whether checkpoints opened inside the block may load pickle weights.

    The default of :class:`Checkpoint`'s ``allow_pickle`` argument; the CLI's
    ``--allow-pickle`` uses it, since the pipeline opens the checkpoints.

    Args:
      allowed: load ``pytorch_model.bin`` and similar through ``torch.load(weights_only=True)``.
    """
    token = _ALLOW_PICKLE.set(bool(allowed))
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is.

    Attributes:
      name: tensor name in the checkpoint.
      file: the shard holding it.
      dtype: safetensors dtype name (``"BF16"``, ``"F32"``...).
      shape: tensor shape.
      start: byte offset of the data from the start of the file (0 for pickled tensors).
      nbytes: size of the data in bytes.
    """

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def _short(text: object, limit: int = 80) -> str:
    """``repr`` of a name taken from a file, cut to ``limit`` characters for messages."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _os_error_message(path: Path, e: OSError) -> str:
    """A one-line description of why ``path`` could not be opened, and what to do."""
    if e.errno == errno.ELOOP:
        return f"{path}: is a symlink loop (a link that leads back to itself); replace it with the real file"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"{path}: is a broken symlink (its target {_short(target)} does not exist); fetch the file again"
        return f"{path}: is missing; fetch it again"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied; make it readable (chmod a+r) or run as a user who may read it"
    if e.errno == errno.ENXIO:
        return f"{path}: is a socket or device, not a regular file; replace it with the real file"
    return f"{path}: cannot read ({e.strerror or e}); check the path and its permissions"


def open_regular(path: str | os.PathLike, error: type[AWMError] = CheckpointError) -> BinaryIO:
    """Opens a file of a model folder for reading, refusing anything but a regular file.

    The file is opened non-blocking and checked with ``fstat`` before any byte is read, so a
    FIFO, a device or a folder standing where a file is expected is refused instead of
    blocking or misreading; symlink loops and broken links get their own message.

    Args:
      path: the file.
      error: the error class raised (the caller's kind of problem).

    Returns:
      The file, open in binary mode; the caller closes it.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(_os_error_message(path, e)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {_file_kind(mode)}, not a regular file; refusing to read it: replace it with the real file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f


def parse_json(raw: bytes, path: str | os.PathLike, error: type[AWMError], fix: str,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """Decodes strict UTF-8 JSON read from ``path``; every failure is one ``error`` line ending in ``fix``.

    ``object_pairs_hook`` is passed to :func:`json.loads` (a hook may raise ``error`` itself)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: is not valid UTF-8 (byte {e.start} is 0x{raw[e.start]:02x}); {fix}") from None
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as e:
        raise error(f"{path}: is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    except ValueError:  # integers beyond Python's digit limit
        raise error(f"{path}: is not usable JSON (a number with too many digits); {fix}") from None
    except RecursionError:
        raise error(f"{path}: is not usable JSON (nested too deeply); {fix}") from None


def read_json(path: str | os.PathLike, error: type[AWMError], fix: str, limit: int = MAX_JSON_BYTES) -> Any:
    """Reads and parses a JSON file of a model folder (regular file, at most ``limit`` bytes).

    Args:
      path: the file.
      error: the error class raised.
      fix: what the user should do, appended to every message.
      limit: the largest size read.

    Returns:
      The parsed JSON value.
    """
    path = Path(path)
    with open_regular(path, error) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise error(f"{path}: is {size} bytes, more than the {limit} accepted for a JSON file; {fix}")
            raw = f.read(limit + 1)
        except OSError as e:
            raise error(_os_error_message(path, e)) from None
    if len(raw) > limit:
        raise error(f"{path}: is more than the {limit} bytes accepted for a JSON file; {fix}")
    return parse_json(raw, path, error, fix)


@functools.lru_cache(maxsize=1)
def memory_limit() -> int | None:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when lower.

    ``None`` when neither can be read. Tensor reads larger than this are refused before
    anything is allocated (an absurd shape in a header must not exhaust the machine).
    """
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object of a safetensors header as a dict, refusing a key given twice: ``json``
    would keep the last silently, and the official loader refuses such a file."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise CheckpointError(
            f"{path}: header lists {_short(twice)} twice, so which entry holds the data is ambiguous; "
            "the file is corrupt: fetch it again"
        )
    return out


def _read_header(path: Path) -> dict[str, TensorInfo]:
    """Parses and validates one safetensors header without reading tensor data."""
    with open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: file is {size} bytes, too short to be safetensors; "
                    "the download or copy is probably truncated: fetch it again"
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: header claims {n} bytes (limit {MAX_HEADER_BYTES}); "
                    "the file is corrupt or not safetensors: fetch it again"
                )
            if 8 + n > size:
                raise CheckpointError(
                    f"{path}: header length {n} runs past the end of the {size}-byte file; "
                    "the file is truncated or corrupt: fetch it again"
                )
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(_os_error_message(path, e)) from None
    if len(raw) != n:
        raise CheckpointError(f"{path}: header is cut short ({len(raw)} of {n} bytes); the file is truncated: fetch it again")
    header = parse_json(raw, path, CheckpointError, "the file is corrupt or not safetensors: fetch it again",
                        object_pairs_hook=lambda pairs: _unique_keys(pairs, path))
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt: fetch it again")
    data_size = size - 8 - n
    spans = []
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise CheckpointError(
                f"{path}: header entry {_short(name)} lacks dtype/shape/data_offsets; the file is corrupt: fetch it again"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or not dtype:
            raise CheckpointError(
                f"{path}: tensor {_short(name)} has dtype {_short(dtype, 40)}, not a dtype name; the file is corrupt: "
                "fetch it again"
            )
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise CheckpointError(
                f"{path}: tensor {_short(name)} has a malformed shape or data_offsets; the file is corrupt: fetch it again"
            )
        begin, end = offsets
        expected = _expected_nbytes(dtype, shape, end - begin)
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {_short(name)} data [{begin}, {end}) lies outside the {data_size}-byte data "
                "section; the file is truncated or corrupt: fetch it again"
            )
        if end - begin != expected:
            shown = str(shape) if len(str(shape)) <= 60 else f"a {len(shape)}-dimensional shape"
            raise CheckpointError(
                f"{path}: tensor {_short(name)} occupies {end - begin} bytes but {dtype} x {shown} needs "
                f"{expected}; the file is corrupt: fetch it again"
            )
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, path, dtype, tuple(shape), 8 + n + begin, end - begin)
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in itertools.pairwise(spans):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {_short(n0)} and {_short(n1)} overlap; the file is corrupt: fetch it again")
    return infos


def _expected_nbytes(dtype: str, shape: list[int], stored: int) -> int:
    """The bytes a tensor of ``dtype`` x ``shape`` occupies; for a dtype awm_jax does not know
    (``F8_E8M0``, ``F4``...), the ``stored`` size is taken as it is: only the extents and overlaps
    of such a tensor are checked, and reading it is refused (:func:`check_readable`)."""
    if dtype not in SAFETENSORS_DTYPES:
        return stored
    return math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize


def check_readable(info: TensorInfo) -> None:
    """Refuses to read a tensor whose dtype awm_jax does not know.

    Unknown dtypes are accepted in headers (a checkpoint may hold tensors awm_jax never reads,
    such as MXFP4 scales in ``F8_E8M0``); only reading one is an error.

    Raises:
      CheckpointError: ``info.dtype`` is not one of :data:`SAFETENSORS_DTYPES`.
    """
    if info.dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{info.file}: tensor {_short(info.name)} has unsupported dtype {_short(info.dtype, 40)} "
            f"(supported: {', '.join(SAFETENSORS_DTYPES)}); convert the checkpoint to one of them"
        )


def _check_config(config: dict[str, Any], path: Path) -> None:
    """Refuses sizes in ``config.json`` that are not one non-negative integer of sane size."""
    scopes = [("", config)]
    for key in _CONFIG_SCOPES:
        if isinstance(config.get(key), dict):
            scopes.append((f"{key}.", config[key]))
    thinker = config.get("thinker_config")
    if isinstance(thinker, dict) and isinstance(thinker.get("text_config"), dict):
        scopes.append(("thinker_config.text_config.", thinker["text_config"]))
    for where, scope in scopes:
        for key in CONFIG_SIZE_KEYS:
            value = scope.get(key)
            if value is None:
                continue
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise CheckpointError(
                    f"{path}: {where}{key} is {_short(value, 40)}, expected one non-negative integer; fix config.json"
                )
            if not 0 <= value <= MAX_CONFIG_INT:
                raise CheckpointError(
                    f"{path}: {where}{key} is {_short(value, 40)}, outside [0, {MAX_CONFIG_INT}]; the config is "
                    "corrupt: fix config.json"
                )
            scope[key] = value


class Checkpoint:
    """A model folder: its config and the tensors of its weight files, read lazily.

    Args:
      path: the model folder.
      allow_pickle: load pickle weights (``pytorch_model.bin``...) when the folder has no
        safetensors, through ``torch.load(weights_only=True, mmap=True)``; ``None`` takes
        the default set by :func:`pickle_loading` (off).

    Raises:
      CheckpointError: the folder is missing, holds no usable weights, or a file is
        unreadable or malformed.
      UsageError: pickle loading was allowed but PyTorch is not installed.
    """

    def __init__(self, path: str | os.PathLike, allow_pickle: bool | None = None):
        self.allow_pickle = _ALLOW_PICKLE.get() if allow_pickle is None else bool(allow_pickle)
        root = Path(path)
        try:
            mode = os.stat(root).st_mode
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.islink(root):
                raise CheckpointError(f"{root}: no such file or folder; check the path") from None
            raise CheckpointError(_os_error_message(root, e)) from None
        if not stat.S_ISDIR(mode):
            if stat.S_ISREG(mode):
                raise CheckpointError(
                    f"{root}: is a file, expected a model folder holding config.json and *.safetensors; "
                    "pass the folder, not a file in it"
                )
            raise CheckpointError(
                f"{root}: is {_file_kind(mode)}, expected a model folder holding config.json and *.safetensors; "
                "check the path"
            )
        self.root = root.resolve()
        try:
            self._names = set(os.listdir(self.root))
        except OSError as e:
            raise CheckpointError(f"{self.root}: cannot list the folder ({e.strerror}); check its permissions") from None
        self._index: dict[str, str] | None = None  # the index's weight_map, when there is one
        self._index_name = INDEX_FILE
        self._pickle = False  # the weights are pickles (loaded only when allowed)
        self._pickled: dict[str, Any] = {}  # tensor name -> loaded torch tensor
        self.files = self._weight_files()
        self.config = self._read_config()
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            infos = self._load_pickle(file) if self._pickle else _read_header(file)
            for name, info in infos.items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"{file}: tensor {_short(name)} also appears in {self.tensors[name].file.name}; "
                        "the checkpoint holds duplicate weights: remove the extra file or fix the index"
                    )
                self.tensors[name] = info
        if self._index is not None:
            missing = sorted(set(self._index) - set(self.tensors))
            if missing:
                raise CheckpointError(
                    f"{self.root / self._index_name}: names {len(missing)} tensor(s) its shards do not hold "
                    f"(first: {_short(missing[0])}); the shards are incomplete: fetch them again"
                )

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.root)!r}, {len(self.tensors)} tensors in {len(self.files)} file(s))"

    def _weight_files(self) -> list[Path]:
        names = self._names
        if INDEX_FILE in names:
            return self._indexed_files(INDEX_FILE)
        if SINGLE_FILE in names:
            return [self.root / SINGLE_FILE]
        others = sorted(n for n in names if n.endswith(".safetensors"))
        if len(others) == 1:
            return [self.root / others[0]]
        if others:
            raise CheckpointError(
                f"{self.root}: {len(others)} *.safetensors files but no {INDEX_FILE} saying which form the model; "
                "add the index (or keep only model.safetensors)"
            )
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) and n not in _NOT_WEIGHTS)
        if PICKLE_INDEX_FILE in names or pickles:
            if not self.allow_pickle:
                shown = ", ".join(([PICKLE_INDEX_FILE] if PICKLE_INDEX_FILE in names else []) + pickles[:3])
                raise CheckpointError(
                    f"{self.root}: holds only pickle weights ({shown}), which are not loaded by default because "
                    "unpickling can run code; convert them to safetensors, or pass --allow-pickle to load them "
                    "with torch.load(weights_only=True)"
                )
            self._pickle = True
            if PICKLE_INDEX_FILE in names:
                return self._indexed_files(PICKLE_INDEX_FILE)
            if PICKLE_SINGLE_FILE in names:
                return [self.root / PICKLE_SINGLE_FILE]
            if len(pickles) == 1:
                return [self.root / pickles[0]]
            raise CheckpointError(
                f"{self.root}: {len(pickles)} pickle files ({', '.join(pickles[:3])}) but no {PICKLE_INDEX_FILE} "
                "saying which form the model; add the index or keep only the weights file"
            )
        raise CheckpointError(f"{self.root}: no model.safetensors or {INDEX_FILE}; is this a model folder?")

    def _indexed_files(self, index_name: str) -> list[Path]:
        index = self.root / index_name
        self._index_name = index_name
        fix = "fetch it again, or remove it if the single weights file is complete"
        data = read_json(index, CheckpointError, fix)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(
                f"{index}: not a valid index (expected JSON with a 'weight_map' of tensor -> shard file); {fix}"
            )
        if not weight_map:
            raise CheckpointError(f"{index}: its weight_map names no shards; {fix}")
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            p = PurePosixPath(shard)
            if (not shard or "\\" in shard or "\x00" in shard or p.is_absolute() or ".." in p.parts
                    or not p.parts or p.parts == (".",)):
                raise CheckpointError(f"{index}: shard path {_short(shard)} leaves the model folder; refusing to read it")
            f = self.root.joinpath(*p.parts)
            if not os.path.lexists(f):
                raise CheckpointError(f"{index}: names shard {_short(shard)}, which is missing; fetch it again")
            files.append(f)
        self._index = weight_map
        return files

    def _read_config(self) -> dict[str, Any]:
        path = self.root / "config.json"
        if "config.json" not in self._names:
            return {}
        config = read_json(path, CheckpointError, "fix or replace config.json")
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: not a JSON object; fix or replace config.json")
        _check_config(config, path)
        return config

    # -- pickle weights ---------------------------------------------------------------------------

    def _load_pickle(self, file: Path) -> dict[str, TensorInfo]:
        """Loads one pickle weights file through ``torch.load(weights_only=True)``."""
        try:
            import torch
        except ImportError:
            raise UsageError(
                f"{file}: --allow-pickle needs PyTorch to load pickle weights safely (torch.load(weights_only=True)); "
                "install torch, or convert the weights to safetensors"
            ) from None
        open_regular(file).close()  # a FIFO, folder or link loop is refused before torch opens it
        fix = "the file is corrupt or holds more than tensors: convert it to safetensors in a trusted environment"
        try:
            try:
                obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or hostile files
            raise CheckpointError(f"{file}: torch.load(weights_only=True) refused it ({_torch_reason(e)}); {fix}") from None
        state = obj
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), Mapping):
                    state = obj[key]
                    break
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{file}: holds a {type(obj).__name__}, not a state dict of named tensors; {fix}")
        names = _torch_dtype_names(torch)
        infos = {}
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            if not isinstance(name, str):
                raise CheckpointError(f"{file}: tensor key {_short(name)} is not a string; {fix}")
            if t.layout != torch.strided or t.dtype not in names:
                raise CheckpointError(
                    f"{file}: tensor {_short(name)} has unsupported dtype or layout ({t.dtype}, {t.layout}); "
                    "convert the checkpoint"
                )
            dtype = names[t.dtype]
            shape = tuple(int(d) for d in t.shape)
            self._pickled[name] = t
            infos[name] = TensorInfo(name, file, dtype, shape, 0, math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize)
        if not infos:
            raise CheckpointError(f"{file}: holds no tensors; {fix}")
        return infos

    def _read_pickled(self, info: TensorInfo, r0: int, r1: int | None) -> np.ndarray:
        import torch

        t = self._pickled[info.name].detach()
        if r1 is not None:
            t = t[r0:r1]
        t = t.contiguous()
        if info.dtype == "BF16":
            arr = t.view(torch.int16).numpy().view(SAFETENSORS_DTYPES["BF16"])
        elif info.dtype.startswith("F8"):
            arr = t.view(torch.uint8).numpy().view(SAFETENSORS_DTYPES[info.dtype])
        else:
            arr = t.numpy()
        return np.array(arr, copy=True)

    # -- access -----------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        """Returns where tensor ``name`` lives, its dtype and shape."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.root}: has no tensor {_short(name)}") from None

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Reads one tensor (or a contiguous block of its rows) in its stored dtype.

        Args:
          name: tensor name.
          rows: optional slice of the first axis; only those bytes are read.

        Returns:
          A numpy array owning its memory (``bfloat16`` arrays use ``ml_dtypes``).

        Raises:
          CheckpointError: the file changed or became unreadable since it was opened, or the
            tensor is larger than the memory of this machine (an absurd header).
        """
        info = self.info(name)
        check_readable(info)
        dtype = SAFETENSORS_DTYPES[info.dtype]
        shape = list(info.shape)
        start = info.start
        r0, r1 = 0, None
        if rows is not None:
            if not shape:
                raise CheckpointError(f"{info.file}: tensor {_short(name)} is a scalar; cannot read rows")
            r0, r1, step = rows.indices(shape[0])
            if step != 1:
                raise ValueError("rows must be a contiguous slice")
            r1 = max(r1, r0)
            start += r0 * math.prod(shape[1:]) * dtype.itemsize
            shape[0] = r1 - r0
        nbytes = math.prod(shape) * dtype.itemsize
        self._check_size(name, nbytes)
        if name in self._pickled:
            return self._read_pickled(info, r0, r1)
        out = np.empty(nbytes, dtype=np.uint8)
        with open_regular(info.file) as f:
            try:
                f.seek(start)
                got = f.readinto(out)
            except OSError as e:
                raise CheckpointError(f"{info.file}: cannot read tensor {_short(name)} ({e.strerror or e})") from None
        if got != out.nbytes:
            raise CheckpointError(
                f"{info.file}: tensor {_short(name)} is cut short ({got} of {out.nbytes} bytes); "
                "the file is truncated: fetch it again"
            )
        return out.view(dtype).reshape(shape)

    def _check_size(self, name: str, nbytes: int) -> None:
        """Refuses a tensor larger than this machine's memory (an absurd header, or a sparse-file
        bomb): reading it would exhaust the memory, and scanning a map of it would never end."""
        limit = memory_limit()
        if limit is not None and nbytes > limit:
            info = self.info(name)
            raise CheckpointError(
                f"{info.file}: tensor {_short(name)} ({info.dtype} x {list(info.shape)}) needs {nbytes / 2**30:.1f} GiB, "
                f"more than the {limit / 2**30:.1f} GiB of memory here; the header is corrupt (absurd size) or the "
                "machine too small: fetch the file again or use a larger machine"
            )

    def map(self, name: str) -> np.ndarray:
        """A read-only memory map of one whole tensor in its stored dtype: no copy is made, pages
        come from the page cache as they are used (for large tensors read once, such as the
        embedding). Tensors of pickled checkpoints (and empty ones) are read as by :meth:`read`.

        The file must not be truncated while the map is in use (the kernel would raise SIGBUS);
        checkpoints are not modified by awm_jax, and a file found short here is refused.

        Raises:
          CheckpointError: the file is unreadable or shorter than its header says, or the tensor
            is larger than the memory of this machine (as :meth:`read`).
        """
        info = self.info(name)
        check_readable(info)
        dtype = SAFETENSORS_DTYPES[info.dtype]
        nbytes = math.prod(info.shape) * dtype.itemsize
        if name in self._pickled or nbytes == 0:
            return self.read(name)
        self._check_size(name, nbytes)
        with open_regular(info.file) as f:
            size = os.fstat(f.fileno()).st_size
            if info.start + nbytes > size:
                raise CheckpointError(
                    f"{info.file}: tensor {_short(name)} is cut short ({max(size - info.start, 0)} of {nbytes} bytes); "
                    "the file is truncated: fetch it again"
                )
            try:
                return np.memmap(f, dtype, "r", offset=info.start, shape=tuple(info.shape))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{info.file}: cannot map tensor {_short(name)} ({e}); check the file") from None


def _torch_reason(e: Exception) -> str:
    """The telling line of a ``torch.load`` error (its messages run over many lines)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                                "Check the documentation"))]
    return f"{type(e).__name__}: {(telling or lines or [''])[0][:160]}"


def _torch_dtype_names(torch: Any) -> dict[Any, str]:
    """torch dtype -> safetensors dtype name, for the dtypes this torch has."""
    pairs = [("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
             ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("int64", "I64"), ("int32", "I32"),
             ("int16", "I16"), ("int8", "I8"), ("uint8", "U8"), ("uint16", "U16"), ("uint32", "U32"),
             ("uint64", "U64"), ("bool", "BOOL")]
    return {getattr(torch, attr): name for attr, name in pairs if hasattr(torch, attr)}
