"""The audit's progress file: an append-only journal of finished work that survives SIGKILL.

``<out>/progress.jsonl`` holds one record per line, ``<json>\\t<crc32 hex>\\n``. The first
record is a header naming the audit (a key over its models' identities and the options that
change scores); every later record is a unit of finished work (one pair's alignment, one
layer's scores for a set of pairs). Each line is written whole, flushed and ``fsync``-ed before
the next unit starts, so a process killed at any instant leaves complete lines plus at most one
torn last line. The reader checks every line's checksum, drops a torn last line (and truncates
it away before appending) and drops a damaged line anywhere else (counted in
``Journal.damaged``: the caller warns and redoes that work; the file is rewritten without it).
A first line that is not this format's header is never touched: the file is refused.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from awm_jax.errors import CacheError, UsageError

__all__ = ["JOURNAL_FORMAT", "JOURNAL_NAME", "Journal", "decode_record", "encode_record"]

JOURNAL_NAME = "progress.jsonl"
JOURNAL_FORMAT = "awm_jax.audit-progress/2"
#: Largest progress file read (a 64-model audit of 32-layer models writes about 10 MB).
MAX_JOURNAL_BYTES = 1 << 30


def encode_record(record: dict) -> bytes:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{text}\t{zlib.crc32(text.encode()):08x}\n".encode()


def decode_record(line: bytes) -> dict | None:
    """The record of one complete line, or ``None`` when its checksum or JSON is bad."""
    try:
        text, crc = line.decode().rstrip("\n").rsplit("\t", 1)
        if int(crc, 16) != zlib.crc32(text.encode()):
            return None
        record = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class Journal:
    """An append-only, checksummed, ``fsync``-ed JSON-lines progress file.

    Args:
      folder: the audit's output folder (created if missing).
      key: identity of the audit; a journal with another key is refused.
      fresh: discard an existing journal instead of resuming it.
      writer: whether this process appends; a reader only loads the records.
      name: the file's name in ``folder`` (each process of a multi-host run writes its own).

    Attributes:
      path: the file.
      records: the finished-work records found (header excluded), in order.
    """

    def __init__(self, folder: str | os.PathLike, key: str, *, fresh: bool = False, writer: bool = True,
                 name: str = JOURNAL_NAME):
        self.path = Path(folder) / name
        self.writer = writer
        self.records: list[dict] = []
        self.damaged = 0
        if writer:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out {self.path.parent}: cannot create the folder ({e.strerror})") from None
            if fresh:
                self.path.unlink(missing_ok=True)
        good_bytes = self._read(key)
        self._file = None
        if writer:
            try:
                if self.damaged:  # keep only the good records, atomically, before appending
                    good_bytes = self._rewrite(key)
                self._file = open(self.path, "ab")
                if self._file.tell() != good_bytes:  # drop a torn last line before appending
                    self._file.truncate(good_bytes)
                    self._file.seek(good_bytes)
                if good_bytes == 0:
                    self._write({"kind": "header", "format": JOURNAL_FORMAT, "key": key})
            except OSError as e:
                raise CacheError(f"{self.path}: cannot write the progress file ({e.strerror}); free disk space or "
                                 "choose another --out") from None

    def _read(self, key: str) -> int:
        """Loads the records (dropping damaged lines, counted in ``damaged``); returns the byte
        length of the file up to its last complete line."""
        from awm_jax.io.checkpoint import open_regular

        if not os.path.lexists(self.path):
            return 0
        with open_regular(self.path, CacheError) as f:
            data = f.read(MAX_JOURNAL_BYTES + 1)
        if len(data) > MAX_JOURNAL_BYTES:
            raise CacheError(f"{self.path}: the progress file is larger than {MAX_JOURNAL_BYTES} bytes; delete it (or "
                             "pass --fresh) to restart the audit")
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: a torn line, or b""
        good = 0
        for i, line in enumerate(lines):
            record = decode_record(line + b"\n")
            good += len(line) + 1
            if i == 0:
                self._check_header(record, key)
            elif record is None:
                self.damaged += 1
            else:
                self.records.append(record)
        return good

    def _check_header(self, record: dict | None, key: str) -> None:
        fmt = record.get("format") if record is not None and record.get("kind") == "header" else None
        if not isinstance(fmt, str) or not fmt.startswith(JOURNAL_FORMAT.rsplit("/", 1)[0] + "/"):
            raise UsageError(f"{self.path}: not an awm_jax audit progress file; choose another --out")
        if fmt != JOURNAL_FORMAT:
            raise UsageError(f"{self.path}: progress of another awm_jax version ({fmt}); pass --fresh to discard it, "
                             "or choose another --out")
        if record.get("key") != key:
            raise UsageError(f"{self.path}: the folder holds the progress of a different audit (other models, "
                             "files or options); pass --fresh to discard it, or choose another --out")

    def _rewrite(self, key: str) -> int:
        """Replaces the file by its header and good records; returns its length."""
        from awm_jax.io.atomic import atomic_write

        data = encode_record({"kind": "header", "format": JOURNAL_FORMAT, "key": key})
        data += b"".join(encode_record(r) for r in self.records)
        atomic_write(self.path, data)
        return len(data)

    def _write(self, record: dict) -> None:
        self._file.write(encode_record(record))
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
