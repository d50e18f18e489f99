"""Sparse weight files (safetensors shards, GGUF files): a file of which only some byte ranges are present.

A partial hub download (:mod:`awm_jax.io.hub_ranges`) writes each weight shard as a file of its
true size holding the real header and only the tensors awm_jax reads, each at its true offset;
the other ranges are holes (they read as zeros, and take no disk space on file systems with
sparse files). Beside it, ``<shard>.awm-ranges.json`` (the *range record*) says which byte
ranges are present: ``[start, end, sha256]`` each, sorted, the header first. Every existing
reader opens such a folder unchanged; :class:`~awm_jax.io.checkpoint.Checkpoint` (and
:class:`~awm_jax.io.gguf.GGUFCheckpoint` for a GGUF file, :mod:`awm_jax.io.hub_gguf`) consults the
range record before it reads or maps a tensor, and a tensor whose bytes are not all present is
refused (:class:`MissingRange`), never read as the zeros of a hole.

Trust: a range enters the record only after all its bytes were received, with the server's
``Content-Range`` matching the request, written and fsync-ed (the record is replaced
atomically after that, so a killed run leaves at most bytes the record does not claim). The
SHA-256 of every range is kept and checked the first time a range is read in a process
(:meth:`SparseFile.require`), so bytes changed on disk since they were fetched are refused
too. A completed file is checked whole against the hub's content hash before it becomes a
regular cache blob (:mod:`awm_jax.io.hub_ranges`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path

from awm_jax.errors import CheckpointError
from awm_jax.io.atomic import atomic_write
from awm_jax.io.files import short_text

__all__ = ["RANGES_SUFFIX", "RANGES_FORMAT", "ByteRange", "MissingRange", "SparseFile", "ranges_path", "write_range"]

#: Suffix of the range record beside a sparse file.
RANGES_SUFFIX = ".awm-ranges.json"
#: Schema of the range record.
RANGES_FORMAT = "awm_jax.sparse/1"
#: Largest range record read (a shard has at most a few thousand ranges).
_MAX_RECORD_BYTES = 64 * 1024 * 1024

#: Ranges verified in this process: (path, size, mtime_ns, start, end, sha256).
_VERIFIED: set[tuple] = set()
_VERIFIED_LOCK = threading.Lock()


class MissingRange(CheckpointError):
    """A tensor of a sparse file whose bytes were not fetched."""


@dataclasses.dataclass(frozen=True, order=True)
class ByteRange:
    """Bytes ``[start, end)`` of a sparse file, present and hashed.

    Attributes:
      start: first byte (from the start of the file).
      end: one past the last byte.
      sha256: hex SHA-256 of the bytes.
    """

    start: int
    end: int
    sha256: str


def ranges_path(file: str | os.PathLike) -> Path:
    """The range record of a sparse file."""
    file = Path(file)
    return file.with_name(file.name + RANGES_SUFFIX)


@dataclasses.dataclass(frozen=True)
class SparseFile:
    """A sparse file's range record.

    Attributes:
      path: the sparse file.
      size: its full size in bytes.
      source: where its bytes come from (``repo_id``, ``commit``, ``file``, ``etag``).
      ranges: the present ranges, sorted, not overlapping.
    """

    path: Path
    size: int
    source: dict
    ranges: tuple[ByteRange, ...]

    # -- reading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseFile | None:
        """The record of ``path``, or ``None`` when it has none (a complete file).

        Raises:
          CheckpointError: the record is damaged, or does not fit the file (another size).
        """
        path = Path(path)
        record = ranges_path(path)
        fix = f"delete {record.name} and {path.name} and run the command again to fetch them anew"
        try:
            with open(record, "rb") as f:
                raw = f.read(_MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            if path.parent.parent.name == "awm_partial":  # a partial hub download's shard: never without one
                raise CheckpointError(f"{path}: a partially downloaded shard without its range record; {fix}") from None
            return None
        except OSError as e:
            raise CheckpointError(f"{record}: cannot read the range record ({e.strerror or e}); {fix}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            if data.get("format") != RANGES_FORMAT or len(raw) > _MAX_RECORD_BYTES:
                raise ValueError
            size = data["size"]
            ranges = tuple(ByteRange(int(s), int(e), str(h)) for s, e, h in data["ranges"])
            source = dict(data["source"])
            if not isinstance(size, int) or size < 0 or list(ranges) != sorted(ranges):
                raise ValueError
            for a, b in zip(ranges, ranges[1:]):
                if b.start < a.end:
                    raise ValueError
            if any(not 0 <= r.start < r.end <= size for r in ranges):
                raise ValueError
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            raise CheckpointError(f"{record}: is not a valid range record; {fix}") from None
        try:
            actual = os.stat(path).st_size
        except OSError:
            actual = -1
        if actual != size:
            raise CheckpointError(
                f"{path}: is {actual} bytes but its range record says {size}; the partial file was changed: {fix}"
            )
        return cls(path, size, source, ranges)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The sub-ranges of ``[start, end)`` not present."""
        gaps = []
        at = start
        for r in self.ranges:
            if r.end <= at:
                continue
            if r.start >= end:
                break
            if r.start > at:
                gaps.append((at, r.start))
            at = max(at, r.end)
            if at >= end:
                break
        if at < end:
            gaps.append((at, end))
        return gaps

    def require(self, start: int, end: int, what: str) -> None:
        """Checks that bytes ``[start, end)`` are present and (once per process) unchanged.

        Args:
          start: first byte.
          end: one past the last byte.
          what: the tensor, for the message.

        Raises:
          MissingRange: some of the bytes were never fetched.
          CheckpointError: a covering range no longer holds the bytes that were fetched.
        """
        if end <= start:
            return
        gaps = self.missing(start, end)
        if gaps:
            raise MissingRange(
                f"{self.path}: tensor {short_text(what)} was not fetched (this is a partial download holding only "
                f"the tensors awm_jax needed so far, {sum(e - s for s, e in gaps)} bytes are missing); run the "
                f"command again with network access to fetch it, or fetch the whole model with --download full"
            )
        st = os.stat(self.path)
        for r in self.ranges:
            if r.end <= start or r.start >= end:
                continue
            key = (str(self.path), st.st_size, st.st_mtime_ns, r.start, r.end, r.sha256)
            with _VERIFIED_LOCK:
                if key in _VERIFIED:
                    continue
            if _hash_range(self.path, r.start, r.end) != r.sha256:
                raise CheckpointError(
                    f"{self.path}: bytes [{r.start}, {r.end}) no longer hold what was fetched (checksum mismatch); "
                    f"the partial file was changed: delete it and {ranges_path(self.path).name}, then run again"
                )
            with _VERIFIED_LOCK:
                _VERIFIED.add(key)

    def present_bytes(self) -> int:
        """Bytes present."""
        return sum(r.end - r.start for r in self.ranges)

    def complete(self) -> bool:
        """Whether every byte is present."""
        return not self.missing(0, self.size)

    # -- writing -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, size: int, source: dict, header: bytes) -> SparseFile:
        """Creates a sparse file of ``size`` bytes holding ``header`` at its start, and its record."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, header, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        sparse = cls(path, size, dict(source), (ByteRange(0, len(header), hashlib.sha256(header).hexdigest()),))
        sparse.save()
        return sparse

    def save(self) -> None:
        """Writes the range record (atomically)."""
        data = {"format": RANGES_FORMAT, "size": self.size, "source": self.source,
                "ranges": [[r.start, r.end, r.sha256] for r in self.ranges]}
        atomic_write(ranges_path(self.path), json.dumps(data, indent=0).encode())

    def with_ranges(self, added: list[ByteRange]) -> SparseFile:
        """The record with ``added`` ranges (written by :func:`write_range`) present; not yet saved."""
        ranges = list(self.ranges)
        for new in added:
            ranges = [r for r in ranges if r.end <= new.start or r.start >= new.end] + [new]
        return dataclasses.replace(self, ranges=tuple(sorted(ranges)))


def write_range(path: Path, start: int, data: bytes | memoryview) -> ByteRange:
    """Writes ``data`` at ``start`` of a sparse file (fsync-ed) and returns its :class:`ByteRange`
    (thread-safe: each call writes its own bytes; the record is updated by the caller)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], start + done)
        os.fsync(fd)
    finally:
        os.close(fd)
    return ByteRange(start, start + len(view), hashlib.sha256(view).hexdigest())


def _hash_range(path: Path, start: int, end: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        at = start
        while at < end:
            chunk = os.pread(f.fileno(), min(16 << 20, end - at), at)
            if not chunk:
                break
            h.update(chunk)
            at += len(chunk)
    return h.hexdigest()
