"""The audit's progress file: an append-only journal of finished work that survives SIGKILL.

``<out>/progress.jsonl`` holds one record per line, ``<json>\\t<crc32 hex>\\n``. The first
record is a header naming the audit (a key over its models' identities and the options that
change scores); every later record is a unit of finished work (one pair's alignment, one
layer's scores for a set of pairs). Each line is written whole, flushed and ``fsync``-ed before
the next unit starts, so a process killed at any instant leaves complete lines plus at most one
torn last line. The reader checks every line's checksum and drops a torn *last* line (and
truncates it away before appending). A damaged line anywhere else, or a record the caller's
``accept`` refuses (a pair index out of range, say), is never trusted and never fatal: it is
dropped with one warning line, its work is done again, and the file is rewritten without it
(atomically). A damaged header drops the whole file (its audit cannot be told). The file is
opened without blocking (a FIFO put in its place is refused, not waited on).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from awm_jax.errors import CacheError, UsageError
from awm_jax.io.atomic import atomic_write

__all__ = ["Journal", "JOURNAL_NAME", "JOURNAL_FORMAT"]

JOURNAL_NAME = "progress.jsonl"
JOURNAL_FORMAT = "awm_jax.audit-progress/1"


def _encode(record: dict) -> bytes:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{text}\t{zlib.crc32(text.encode()):08x}\n".encode()


def _decode(line: bytes) -> dict | None:
    """The record of one complete line, or ``None`` when its checksum or JSON is bad."""
    try:
        text, crc = line.decode().rstrip("\n").rsplit("\t", 1)
        if int(crc, 16) != zlib.crc32(text.encode()):
            return None
        record = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _accepted(accept: Callable[[dict], bool], record: dict) -> bool:
    """``accept(record)``; a record that makes it fail (a field of the wrong type) is not accepted."""
    try:
        return bool(accept(record))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return False


class Journal:
    """An append-only, checksummed, ``fsync``-ed JSON-lines progress file.

    Args:
      folder: the audit's output folder (created if missing).
      key: identity of the audit; a journal with another key is refused.
      fresh: discard an existing journal instead of resuming it.
      writer: whether this process appends (process 0 of a multi-host run); others only read.
      accept: tells whether a finished-work record (checksum intact) is one this audit can use;
        the others are dropped like damaged lines.

    Attributes:
      path: the file.
      records: the finished-work records found (header excluded), in order.
    """

    def __init__(self, folder: str | os.PathLike, key: str, *, fresh: bool = False, writer: bool = True,
                 accept: Callable[[dict], bool] | None = None):
        self.path = Path(folder) / JOURNAL_NAME
        self.accept = accept
        self.writer = writer
        self.records: list[dict] = []
        if writer:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out {self.path.parent}: cannot create the folder ({e.strerror})") from None
            if fresh:
                try:
                    self.path.unlink(missing_ok=True)
                except OSError as e:
                    raise UsageError(f"{self.path}: cannot remove it for --fresh ({e.strerror}); remove it or choose "
                                     "another --out") from None
        good_bytes = self._read(key)
        self._file = None
        if writer:
            try:
                self._file = open(self.path, "ab")
                if self._file.tell() != good_bytes:  # drop a torn last line before appending
                    self._file.truncate(good_bytes)
                    self._file.seek(good_bytes)
                if good_bytes == 0:
                    self._write({"kind": "header", "format": JOURNAL_FORMAT, "key": key})
            except OSError as e:
                raise CacheError(f"{self.path}: cannot write the progress file ({e.strerror}); free disk space or "
                                 "choose another --out") from None

    def _load(self) -> bytes:
        """The file's bytes (``b""`` when there is none), read without following it into a FIFO."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise CacheError(f"{self.path}: cannot read the progress file ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"{self.path}: not a regular file; remove it or choose another --out")
            chunks = []
            while chunk := os.read(fd, 1 << 24):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as e:
            raise CacheError(f"{self.path}: cannot read the progress file ({e.strerror})") from None
        finally:
            os.close(fd)

    def _read(self, key: str) -> int:
        """Loads the records; returns the byte length of the file once damaged lines are dropped
        (the valid prefix, before a torn last line)."""
        data = self._load()
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: a torn line, or b""
        good = 0
        kept: list[bytes] = []
        dropped: list[int] = []
        for i, line in enumerate(lines):
            record = _decode(line + b"\n")
            if i == 0:
                if record is None:  # which audit this was cannot be told: start afresh
                    self._warn("its first line (the header) is damaged; the audit starts afresh")
                    self._rewrite([])
                    return 0
                if record.get("kind") != "header" or record.get("format") != JOURNAL_FORMAT:
                    raise UsageError(f"{self.path}: not an awm_jax audit progress file; choose another --out")
                if record.get("key") != key:
                    raise UsageError(f"{self.path}: the folder holds the progress of a different audit (other models, "
                                     "files or options); pass --fresh to discard it, or choose another --out")
                kept.append(line)
            elif record is None and i == len(lines) - 1 and not tail:  # a damaged last line: treat it as torn
                break
            elif record is None or record.get("kind") == "header" or (
                    self.accept is not None and not _accepted(self.accept, record)):
                dropped.append(i + 1)
                continue
            else:
                self.records.append(record)
                kept.append(line)
            good += len(line) + 1
        if dropped:
            self._warn(f"{len(dropped)} damaged or unusable line(s) dropped (line {dropped[0]} first); their work is "
                       "done again")
            self._rewrite(kept)
            good = sum(len(line) + 1 for line in kept)
        return good

    def _warn(self, message: str) -> None:
        print(f"awm_jax: warning: {self.path}: {message}", file=sys.stderr, flush=True)

    def _rewrite(self, lines: list[bytes]) -> None:
        """Replaces the file with ``lines`` (atomically; only the writing process does)."""
        if not self.writer:
            return
        try:
            atomic_write(self.path, b"".join(line + b"\n" for line in lines))
        except OSError as e:
            raise CacheError(f"{self.path}: cannot write the progress file ({e.strerror}); free disk space or "
                             "choose another --out") from None

    def _write(self, record: dict) -> None:
        """Appends one record durably."""
        self._file.write(_encode(record))
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: dict) -> None:
        """Appends one finished-work record durably (a no-op on non-writing processes)."""
        if not self.writer:
            return
        try:
            self._write(record)
        except OSError as e:
            raise CacheError(f"{self.path}: cannot write the progress file ({e.strerror}); free disk space and "
                             "rerun: finished work is kept") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
