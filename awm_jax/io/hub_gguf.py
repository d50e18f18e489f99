"""GGUF repositories on the hub: ``owner/name:Q4_K_M`` (or a repository holding one GGUF model).

:func:`~awm_jax.io.hub.resolve_model` hands a hub id whose repository is read as GGUF here
(``owner/name[@revision]:QUANT``, or ``owner/name[@revision]`` when the repository holds GGUF files
and no safetensors weights):

- :func:`choose_files` picks the model's files from the repository's top-level file list, as a
  local ``FOLDER:QUANT`` does (:func:`awm_jax.io.gguf.select_model`): a file name or a
  quantisation type naming exactly one model, a split set (``NAME-00001-of-0000N.gguf`` ...)
  whole; anything else is one error line listing the quantisation types the repository offers.
- With ``fetch="partial"`` each file becomes a sparse file of the partial snapshot
  (:mod:`awm_jax.io.hub_partial`, :mod:`awm_jax.io.sparse`) holding its header (metadata and
  tensor descriptions, found by :func:`header_length` and fetched with Range requests that grow
  until it is complete) and holes; the tensors AWM reads are fetched later as byte ranges by
  :func:`~awm_jax.io.hub_partial.fetch_tensors`, exactly as for safetensors shards. With
  ``fetch="full"`` the files are downloaded whole (resumable) into the standard snapshot.

The model is returned as the path of its first file, which :class:`~awm_jax.io.gguf.GGUFCheckpoint`
opens (split files beside it).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from awm_jax.errors import CheckpointError
from awm_jax.io import _ranges
from awm_jax.io._network import Watch
from awm_jax.io.sparse import ranges_path

__all__ = ["GGUF_HEADER_GUESS", "MAX_GGUF_HEADER_BYTES", "quants_in", "choose_files", "header_length", "fetch_header",
           "cached_gguf", "download_gguf"]

#: First request for a GGUF header (metadata with a 32k-token vocabulary is about 0.5-1 MB).
GGUF_HEADER_GUESS = 1 << 20
#: Largest GGUF header read (a 256k-token vocabulary with merges is well under this).
MAX_GGUF_HEADER_BYTES = 256 << 20

_QUANT = re.compile(r"(?<![A-Za-z0-9])((?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)
_SPLIT_TAIL = re.compile(r"-\d{5}-of-\d{5}$")


def quants_in(names: list[str]) -> list[str]:
    """The quantisation types named by GGUF file names (``Q4_K_M``, ``IQ2_XS``, ``F16``...), sorted, once each."""
    found = set()
    for name in names:
        m = _QUANT.search(_SPLIT_TAIL.sub("", name.removesuffix(".gguf")))
        if m:
            found.add(m[1].upper())
    return sorted(found)


def choose_files(repo: str, files: list[str], selector: str | None) -> list[str] | None:
    """The GGUF files (first file first) a hub id selects from its repository's file list.

    Args:
      repo: the hub id, for messages.
      files: every file path of the repository at the resolved commit.
      selector: the ``:QUANT`` (or file name) suffix, or ``None``.

    Returns:
      The file names; ``None`` when there is no selector and the repository has no top-level GGUF file.

    Raises:
      CheckpointError: a selector and no GGUF file, or a selector (or its absence, with several
        models) that does not name exactly one model.
    """
    from awm_jax.io.gguf import select_model

    names = sorted(f for f in files if "/" not in f and f.endswith(".gguf"))
    if not names:
        if selector is None:
            return None
        nested = sorted(f for f in files if f.endswith(".gguf"))
        where = f" (only in subfolders, e.g. {nested[0]}, which awm_jax does not fetch)" if nested else ""
        raise CheckpointError(
            f"{repo}: the repository holds no .gguf file{where}, so :{selector} selects nothing; drop the suffix to "
            "read its safetensors weights, or name a GGUF repository"
        )
    available = ", ".join(quants_in(names)) or ", ".join(names[:4])
    return select_model(names, selector, repo, f"quants available: {available}")


class _Short(Exception):
    """The buffer ends before the header does."""


def _read(buf: bytes, at: int, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    if at + size > len(buf):
        raise _Short
    return struct.unpack_from(fmt, buf, at)


#: GGUF metadata value types (gguf.GGUFValueType) -> fixed size in bytes (8: string, 9: array).
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_value(buf: bytes, at: int, kind: int) -> int:
    if kind in _SCALAR:
        if at + _SCALAR[kind] > len(buf):
            raise _Short
        return at + _SCALAR[kind]
    if kind == 8:
        (n,) = _read(buf, at, "<Q")
        if n > MAX_GGUF_HEADER_BYTES:
            raise ValueError(f"a {n}-byte string")
        return at + 8 + n
    if kind == 9:
        item, count = _read(buf, at, "<IQ")
        at += 12
        if count > MAX_GGUF_HEADER_BYTES:
            raise ValueError(f"an array of {count} items")
        if item in _SCALAR:
            return at + _SCALAR[item] * count
        for _ in range(count):
            at = _skip_value(buf, at, item)
            if at > len(buf):
                raise _Short
        return at
    raise ValueError(f"metadata value type {kind}")


def header_length(buf: bytes) -> int | None:
    """Where the tensor data of a GGUF file starts (header, metadata and tensor infos, aligned),
    or ``None`` when ``buf`` (the file's first bytes) ends before the header does.

    Raises:
      ValueError: the bytes are not a GGUF (v2/v3) header.
    """
    try:
        magic, version = _read(buf, 0, "<4sI")
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError("not GGUF version 2 or 3" if magic == b"GGUF" else "no GGUF magic bytes")
        n_tensors, n_kv = _read(buf, 8, "<QQ")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise ValueError(f"{n_tensors} tensors and {n_kv} metadata keys")
        at, alignment = 24, 32
        for _ in range(n_kv):
            (n,) = _read(buf, at, "<Q")
            if n > 1 << 16:
                raise ValueError(f"a {n}-byte metadata key")
            key = bytes(buf[at + 8:at + 8 + n])
            (kind,) = _read(buf, at + 8 + n, "<I")
            at = at + 12 + n
            if key == b"general.alignment" and kind == 4:
                (alignment,) = _read(buf, at, "<I")
                if alignment == 0 or alignment & (alignment - 1):
                    raise ValueError(f"general.alignment {alignment}")
            at = _skip_value(buf, at, kind)
        for _ in range(n_tensors):
            (n,) = _read(buf, at, "<Q")
            if n > 1 << 16:
                raise ValueError(f"a {n}-byte tensor name")
            (dims,) = _read(buf, at + 8 + n, "<I")
            if dims > 8:
                raise ValueError(f"a tensor of {dims} dimensions")
            at += 8 + n + 4 + 8 * dims + 4 + 8
        if at > len(buf):
            raise _Short
    except _Short:
        return None
    return at + (-at) % alignment


def fetch_header(remote: _ranges.RemoteFile, watch: Watch) -> bytes:
    """The first bytes of a remote GGUF file, through its whole header: a first request of
    :data:`GGUF_HEADER_GUESS` bytes, then requests doubling what is held until the header ends.

    Raises:
      CheckpointError: the file is not GGUF, or is shorter than its header says.
    """
    held = b""
    want = min(remote.size, GGUF_HEADER_GUESS)
    while True:
        if want > len(held):
            held += _ranges.read_range(remote, len(held), want, watch)
        try:
            end = header_length(held)
        except ValueError as e:
            raise CheckpointError(
                f"{remote.repo_id}: {remote.name} is not a readable GGUF file ({e}); it is corrupt: pick another "
                "revision or file"
            ) from None
        if end is not None and end <= remote.size:
            return held
        if len(held) >= remote.size or len(held) >= MAX_GGUF_HEADER_BYTES:
            raise CheckpointError(
                f"{remote.repo_id}: {remote.name} ({remote.size} bytes) ends before its GGUF header does (or the header "
                f"is over {MAX_GGUF_HEADER_BYTES >> 20} MiB); it is truncated: pick another revision or file"
            )
        want = min(remote.size, 2 * len(held), MAX_GGUF_HEADER_BYTES)


def _names_in(folder: Path, partial: bool) -> list[str]:
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".gguf") and not n.startswith(".")]
    except OSError:
        return []
    return sorted(n for n in names if not partial or ranges_path(folder / n).is_file())


def cached_gguf(folder: Path, selector: str | None, partial: bool) -> Path | None:
    """The first file of the GGUF model ``selector`` selects among the (complete, or for a partial
    folder recorded) GGUF files of a cache folder, or ``None``; no network, no error."""
    from awm_jax.io.gguf import select_model

    names = _names_in(folder, partial)
    if not names:
        return None
    try:
        chosen = select_model(names, selector, str(folder), "")
    except CheckpointError:
        return None
    return folder / chosen[0] if chosen and all((folder / n).is_file() for n in chosen) else None


def download_gguf(hub_id, storage: Path, commit: str, names: list[str], endpoint: str | None, watch: Watch,
                  fetch: str, cache: Path) -> Path:
    """Fetches the GGUF files ``names`` of ``commit``: their headers into sparse files of the partial
    snapshot (``fetch="partial"``; files already there are kept), or whole into the snapshot.

    Returns:
      The path of the first file.
    """
    from awm_jax.io.hub import _fetch_resumable
    from awm_jax.io.hub_partial import create_sparse, partial_folder

    if fetch == "full":
        for name in names:
            _fetch_resumable(hub_id.repo_id, name, commit, cache, endpoint, watch)
        return storage / "snapshots" / commit / names[0]
    folder = partial_folder(storage, commit)
    folder.mkdir(parents=True, exist_ok=True)
    create_sparse(folder, hub_id, commit, names, endpoint, watch, fetch_header)
    return folder / names[0]
