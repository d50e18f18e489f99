"""Checkpoint reading: safetensors folders, read lazily one tensor at a time.

A checkpoint is a folder holding either a single ``model.safetensors`` or a sharded set
described by ``model.safetensors.index.json`` (exactly the shards the index names are read;
other ``*.safetensors`` files in the folder, such as adapters or duplicates, are ignored).
Opening a checkpoint reads and validates only the JSON headers; tensor data is read on
request, one tensor (or a block of rows) at a time, so peak memory is bounded by the largest
tensor the method needs, never by the checkpoint size.

Nothing in the folder is executed or unpickled, and nothing is written to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy; safetensors needs it)
import numpy as np

from awm_jax.errors import CheckpointError

__all__ = ["Checkpoint", "TensorInfo", "MAX_HEADER_BYTES", "SAFETENSORS_DTYPES"]

#: Largest safetensors JSON header accepted, checked before anything is allocated.
MAX_HEADER_BYTES = 100 * 1024 * 1024

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

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is.

    Attributes:
      name: tensor name in the checkpoint.
      file: the shard holding it.
      dtype: safetensors dtype name (``"BF16"``, ``"F32"``...).
      shape: tensor shape.
      start: byte offset of the data from the start of the file.
      nbytes: size of the data in bytes.
    """

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int


def _read_header(path: Path) -> dict[str, Any]:
    """Parses and validates one safetensors header without reading tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
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
        raise CheckpointError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path}: header is not valid JSON; the file is corrupt or not safetensors: fetch it again"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt: fetch it again")
    data_size = size - 8 - n
    spans = []
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise CheckpointError(f"{path}: header entry {name!r} lacks dtype/shape/data_offsets; the file is corrupt")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name!r} has unsupported dtype {dtype!r}; "
                f"supported: {', '.join(SAFETENSORS_DTYPES)}; convert the checkpoint"
            )
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape or data_offsets; the file is corrupt")
        begin, end = offsets
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r} data [{begin}, {end}) lies outside the {data_size}-byte data "
                "section; the file is truncated or corrupt: fetch it again"
            )
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} occupies {end - begin} bytes but {dtype} x {shape} needs "
                f"{expected}; the file is corrupt"
            )
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, path, dtype, tuple(shape), 8 + n + begin, end - begin)
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap; the file is corrupt")
    return infos


class Checkpoint:
    """A model folder: its config and the tensors of its safetensors files, read lazily.

    Args:
      path: the model folder.

    Raises:
      CheckpointError: the folder is missing, holds no safetensors weights, or a file is
        unreadable or malformed.
    """

    def __init__(self, path: str | os.PathLike):
        root = Path(path)
        try:
            if not root.exists():
                raise CheckpointError(f"{root}: no such file or folder; check the path")
            if not root.is_dir():
                raise CheckpointError(f"{root}: is a file, expected a model folder holding config.json and *.safetensors")
            self.root = root.resolve()
            self.files = self._weight_files()
        except OSError as e:
            raise CheckpointError(f"{root}: cannot open ({e.strerror}); check the path and its permissions") from None
        self.config = self._read_config()
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            for name, info in _read_header(file).items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"{file}: tensor {name!r} also appears in {self.tensors[name].file.name}; "
                        "the checkpoint holds duplicate weights: remove the extra file or fix the index"
                    )
                self.tensors[name] = info
        if self._index is not None:
            missing = sorted(set(self._index) - set(self.tensors))
            if missing:
                raise CheckpointError(
                    f"{self.root / INDEX_FILE}: names {len(missing)} tensor(s) its shards do not hold "
                    f"(first: {missing[0]!r}); the shards are incomplete: fetch them again"
                )

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.root)!r}, {len(self.tensors)} tensors in {len(self.files)} file(s))"

    def _weight_files(self) -> list[Path]:
        index = self.root / INDEX_FILE
        self._index: dict[str, str] | None = None
        if index.exists():
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
                weight_map = data["weight_map"]
                if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
                ):
                    raise TypeError
            except OSError as e:
                raise CheckpointError(f"{index}: cannot read ({e.strerror})") from None
            except (ValueError, KeyError, TypeError):
                raise CheckpointError(
                    f"{index}: not a valid index (expected JSON with a 'weight_map' of tensor -> shard file); "
                    "fetch it again or remove it if model.safetensors is complete"
                ) from None
            files = []
            for shard in dict.fromkeys(weight_map.values()):
                p = Path(shard)
                if p.is_absolute() or ".." in p.parts or len(p.parts) != 1:
                    raise CheckpointError(
                        f"{index}: shard path {shard!r} leaves the model folder; refusing to read it"
                    )
                f = self.root / p
                if not f.is_file():
                    raise CheckpointError(f"{index}: names shard {shard!r}, which is missing; fetch it again")
                files.append(f)
            self._index = weight_map
            return files
        single = self.root / SINGLE_FILE
        if single.is_file():
            return [single]
        others = sorted(p.name for p in self.root.glob("*.safetensors"))
        if len(others) == 1:
            return [self.root / others[0]]
        pickles = sorted(p.name for p in self.root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if others:
            raise CheckpointError(
                f"{self.root}: {len(others)} *.safetensors files but no {INDEX_FILE} saying which form the model; "
                "add the index (or keep only model.safetensors)"
            )
        if pickles:
            raise CheckpointError(
                f"{self.root}: only pickle weights ({', '.join(pickles[:3])}), which are not loaded because "
                "unpickling can run code; convert them to safetensors"
            )
        raise CheckpointError(f"{self.root}: no model.safetensors or {INDEX_FILE}; is this a model folder?")

    def _read_config(self) -> dict[str, Any]:
        path = self.root / "config.json"
        if not path.exists():
            return {}
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e}); fix or replace config.json") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: not a JSON object; fix or replace config.json")
        return config

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        """Returns where tensor ``name`` lives, its dtype and shape."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.root}: has no tensor {name!r}") from None

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Reads one tensor (or a contiguous block of its rows) in its stored dtype.

        Args:
          name: tensor name.
          rows: optional slice of the first axis; only those bytes are read.

        Returns:
          A numpy array owning its memory (``bfloat16`` arrays use ``ml_dtypes``).
        """
        info = self.info(name)
        dtype = SAFETENSORS_DTYPES[info.dtype]
        shape = list(info.shape)
        start = info.start
        if rows is not None:
            if not shape:
                raise CheckpointError(f"{info.file}: tensor {name!r} is a scalar; cannot read rows")
            r0, r1, step = rows.indices(shape[0])
            if step != 1:
                raise ValueError("rows must be a contiguous slice")
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            start += r0 * row_bytes
            shape[0] = max(r1 - r0, 0)
        out = np.empty(math.prod(shape) * dtype.itemsize, dtype=np.uint8)
        try:
            with open(info.file, "rb") as f:
                f.seek(start)
                got = f.readinto(out)
        except OSError as e:
            raise CheckpointError(f"{info.file}: cannot read tensor {name!r} ({e.strerror})") from None
        if got != out.nbytes:
            raise CheckpointError(
                f"{info.file}: tensor {name!r} is cut short ({got} of {out.nbytes} bytes); "
                "the file is truncated: fetch it again"
            )
        return out.view(dtype).reshape(shape)
