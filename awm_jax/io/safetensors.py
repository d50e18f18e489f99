"""The safetensors format: the JSON header of one file, validated before anything is allocated
(size capped at ``MAX_HEADER_BYTES``, names unique, dtypes and extents checked), and the record
of one tensor (:class:`TensorInfo`). A tensor of a dtype awm_jax does not know is accepted in the
header and refused only when it is read (:func:`check_readable`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy)
import numpy as np

from awm_jax.errors import CheckpointError
from awm_jax.io.files import open_regular, os_error_message, parse_json, short_text

__all__ = ["MAX_HEADER_BYTES", "SAFETENSORS_DTYPES", "TensorInfo", "check_readable", "read_header"]

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


def _unique_keys(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object of a safetensors header as a dict, refusing a key given twice: ``json``
    would keep the last silently, and the official loader refuses such a file."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise CheckpointError(
            f"{path}: header lists {short_text(twice)} twice, so which entry holds the data is ambiguous; "
            "the file is corrupt: fetch it again"
        )
    return out


def read_header(path: Path) -> dict[str, TensorInfo]:
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
            raise CheckpointError(os_error_message(path, e)) from None
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
                f"{path}: header entry {short_text(name)} lacks dtype/shape/data_offsets; the file is corrupt: fetch it again"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or not dtype:
            raise CheckpointError(
                f"{path}: tensor {short_text(name)} has dtype {short_text(dtype, 40)}, not a dtype name; the file is corrupt: "
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
                f"{path}: tensor {short_text(name)} has a malformed shape or data_offsets; the file is corrupt: fetch it again"
            )
        begin, end = offsets
        expected = _expected_nbytes(dtype, shape, end - begin)
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {short_text(name)} data [{begin}, {end}) lies outside the {data_size}-byte data "
                "section; the file is truncated or corrupt: fetch it again"
            )
        if end - begin != expected:
            shown = str(shape) if len(str(shape)) <= 60 else f"a {len(shape)}-dimensional shape"
            raise CheckpointError(
                f"{path}: tensor {short_text(name)} occupies {end - begin} bytes but {dtype} x {shown} needs "
                f"{expected}; the file is corrupt: fetch it again"
            )
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, path, dtype, tuple(shape), 8 + n + begin, end - begin)
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in itertools.pairwise(spans):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {short_text(n0)} and {short_text(n1)} overlap; the file is corrupt: fetch it again")
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
            f"{info.file}: tensor {short_text(info.name)} has unsupported dtype {short_text(info.dtype, 40)} "
            f"(supported: {', '.join(SAFETENSORS_DTYPES)}); convert the checkpoint to one of them"
        )
