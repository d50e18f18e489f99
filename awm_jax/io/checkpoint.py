"""Checkpoint reading: safetensors folders, read lazily one tensor at a time.

A checkpoint is a folder holding either a single ``model.safetensors`` or a sharded set
described by ``model.safetensors.index.json`` (exactly the shards the index names are read;
other ``*.safetensors`` files in the folder, such as adapters or duplicates, are ignored).
Opening a checkpoint reads and validates only the JSON headers; tensor data is read on
request, one tensor (or a block of rows) at a time, so peak memory is bounded by the largest
tensor the method needs, never by the checkpoint size. The embedding, read once per comparison
and used a block of shared rows at a time, is instead memory-mapped read-only (:meth:`Checkpoint.map`):
its pages come from the page cache and count against no allocation.

A shard with a range record beside it (a partial hub download, :mod:`awm_jax.io.sparse`) holds
only some tensors: each read and map first checks that the tensor's bytes are all present (and
unchanged since they were fetched), and refuses a tensor that is not, never reading a hole as
zeros.

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
the file and the problem and saying what to do. The pieces live apart: ``files`` (regular files,
capped JSON), ``safetensors`` (headers, :class:`TensorInfo`), ``pickle_weights`` (the opt-in
``torch.load`` path), ``memory`` (the memory limit reads and maps are checked against); this
module binds them into a :class:`Checkpoint` and validates ``config.json``, and re-exports the
names other modules use.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from awm_jax.errors import CheckpointError, UsageError
from awm_jax.io.files import MAX_JSON_BYTES, file_kind, open_regular, os_error_message, parse_json, read_json, short_text
from awm_jax.io.memory import memory_limit
from awm_jax.io.pickle_weights import (
    NOT_WEIGHTS,
    PICKLE_INDEX_FILE,
    PICKLE_SINGLE_FILE,
    PICKLE_SUFFIXES,
    pickle_allowed,
    pickle_loading,
    torch_dtype_names,
    torch_reason,
)
from awm_jax.io.safetensors import MAX_HEADER_BYTES, SAFETENSORS_DTYPES, TensorInfo, check_readable, read_header
from awm_jax.io.sparse import SparseFile

__all__ = [
    "Checkpoint",
    "TensorInfo",
    "TensorTable",
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
    "tracing",
]

#: Tensor names read while tracing (:meth:`Checkpoint.tracing`), per thread of execution.
_TRACE: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("awm_jax_trace", default=None)

@contextlib.contextmanager
def tracing():
    """Within the block, in this thread, :meth:`Checkpoint.read` and :meth:`Checkpoint.map` of every
    checkpoint (a model's, and the base an adapter reads through) touch no file: they record the
    tensor names asked for (the yielded set) and return zeros of the right shape and dtype. A dry
    run of a computation under it names the tensors the real one will read."""
    names: set[str] = set()
    token = _TRACE.set(names)
    try:
        yield names
    finally:
        _TRACE.reset(token)


#: Largest size accepted in ``config.json`` (hidden size, layer and head counts...).
MAX_CONFIG_INT = 2**31 - 1




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
                    f"{path}: {where}{key} is {short_text(value, 40)}, expected one non-negative integer; fix config.json"
                )
            if not 0 <= value <= MAX_CONFIG_INT:
                raise CheckpointError(
                    f"{path}: {where}{key} is {short_text(value, 40)}, outside [0, {MAX_CONFIG_INT}]; the config is "
                    "corrupt: fix config.json"
                )
            scope[key] = value


class TensorTable:
    """What every checkpoint kind answers the same way: which tensors it holds (``self.tensors``,
    name -> :class:`TensorInfo`) and where one lives; one message for a missing name."""

    root: Path
    tensors: dict[str, TensorInfo]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        """Where tensor ``name`` lives, its dtype (as :meth:`read` returns it) and shape."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.root}: has no tensor {short_text(name)}") from None


class Checkpoint(TensorTable):
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
        self.allow_pickle = pickle_allowed() if allow_pickle is None else bool(allow_pickle)
        root = Path(path)
        try:
            mode = os.stat(root).st_mode
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.islink(root):
                raise CheckpointError(f"{root}: no such file or folder; check the path") from None
            raise CheckpointError(os_error_message(root, e)) from None
        if not stat.S_ISDIR(mode):
            if stat.S_ISREG(mode):
                raise CheckpointError(
                    f"{root}: is a file, expected a model folder holding config.json and *.safetensors; "
                    "pass the folder, not a file in it"
                )
            raise CheckpointError(
                f"{root}: is {file_kind(mode)}, expected a model folder holding config.json and *.safetensors; "
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
        self.sparse: dict[Path, SparseFile] = {}  # partial downloads: the ranges present (awm_jax.io.sparse)
        self.reload_ranges()
        for file in self.files:
            infos = self._load_pickle(file) if self._pickle else read_header(file)
            for name, info in infos.items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"{file}: tensor {short_text(name)} also appears in {self.tensors[name].file.name}; "
                        "the checkpoint holds duplicate weights: remove the extra file or fix the index"
                    )
                self.tensors[name] = info
        if self._index is not None:
            missing = sorted(set(self._index) - set(self.tensors))
            if missing:
                raise CheckpointError(
                    f"{self.root / self._index_name}: names {len(missing)} tensor(s) its shards do not hold "
                    f"(first: {short_text(missing[0])}); the shards are incomplete: fetch them again"
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
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) and n not in NOT_WEIGHTS)
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
                raise CheckpointError(f"{index}: shard path {short_text(shard)} leaves the model folder; refusing to read it")
            f = self.root.joinpath(*p.parts)
            if not os.path.lexists(f):
                raise CheckpointError(f"{index}: names shard {short_text(shard)}, which is missing; fetch it again")
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

    def reload_ranges(self) -> None:
        """Reads the range records of the sparse (partially downloaded) weight files again."""
        if self._pickle:
            return
        self.sparse = {f: sparse for f in self.files if (sparse := SparseFile.load(f)) is not None}

    def tracing(self):
        """:func:`tracing` (every checkpoint read in this thread is traced, not only this one)."""
        return tracing()

    def _traced(self, info: TensorInfo, shape: list[int]) -> np.ndarray | None:
        trace = _TRACE.get()
        if trace is None:
            return None
        trace.add(info.name)
        return np.zeros(shape, SAFETENSORS_DTYPES[info.dtype])

    def _require(self, info: TensorInfo, start: int, nbytes: int) -> None:
        """Refuses to read bytes a partial download does not hold (:class:`~awm_jax.io.sparse.MissingRange`)."""
        sparse = self.sparse.get(info.file)
        if sparse is not None:
            sparse.require(start, start + nbytes, info.name)

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
            raise CheckpointError(f"{file}: torch.load(weights_only=True) refused it ({torch_reason(e)}); {fix}") from None
        state = obj
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), Mapping):
                    state = obj[key]
                    break
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{file}: holds a {type(obj).__name__}, not a state dict of named tensors; {fix}")
        names = torch_dtype_names(torch)
        infos = {}
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            if not isinstance(name, str):
                raise CheckpointError(f"{file}: tensor key {short_text(name)} is not a string; {fix}")
            if t.layout != torch.strided or t.dtype not in names:
                raise CheckpointError(
                    f"{file}: tensor {short_text(name)} has unsupported dtype or layout ({t.dtype}, {t.layout}); "
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
                raise CheckpointError(f"{info.file}: tensor {short_text(name)} is a scalar; cannot read rows")
            r0, r1, step = rows.indices(shape[0])
            if step != 1:
                raise ValueError("rows must be a contiguous slice")
            r1 = max(r1, r0)
            start += r0 * math.prod(shape[1:]) * dtype.itemsize
            shape[0] = r1 - r0
        nbytes = math.prod(shape) * dtype.itemsize
        self._check_size(name, nbytes)
        if (traced := self._traced(info, shape)) is not None:
            return traced
        if name in self._pickled:
            return self._read_pickled(info, r0, r1)
        self._require(info, start, nbytes)
        out = np.empty(nbytes, dtype=np.uint8)
        with open_regular(info.file) as f:
            try:
                f.seek(start)
                got = f.readinto(out)
            except OSError as e:
                raise CheckpointError(f"{info.file}: cannot read tensor {short_text(name)} ({e.strerror or e})") from None
        if got != out.nbytes:
            raise CheckpointError(
                f"{info.file}: tensor {short_text(name)} is cut short ({got} of {out.nbytes} bytes); "
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
                f"{info.file}: tensor {short_text(name)} ({info.dtype} x {list(info.shape)}) needs {nbytes / 2**30:.1f} GiB, "
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
        if name in self._pickled or nbytes == 0 or _TRACE.get() is not None:
            return self.read(name)
        self._check_size(name, nbytes)
        self._require(info, info.start, nbytes)
        with open_regular(info.file) as f:
            size = os.fstat(f.fileno()).st_size
            if info.start + nbytes > size:
                raise CheckpointError(
                    f"{info.file}: tensor {short_text(name)} is cut short ({max(size - info.start, 0)} of {nbytes} bytes); "
                    "the file is truncated: fetch it again"
                )
            try:
                return np.memmap(f, dtype, "r", offset=info.start, shape=tuple(info.shape))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{info.file}: cannot map tensor {short_text(name)} ({e}); check the file") from None


