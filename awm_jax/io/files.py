"""Reading files that strangers hand over: regular files only, sizes capped before allocation,
one-line messages naming the file and what to do.

A file is opened only after it is known to be a regular file (a FIFO, a device, a folder or a
symlink loop standing where a file is expected is refused, so nothing blocks); JSON files are
read up to ``MAX_JSON_BYTES``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from awm_jax.errors import AWMError, CheckpointError

__all__ = ["MAX_JSON_BYTES", "open_regular", "parse_json", "read_json", "short_text", "file_kind", "os_error_message"]

#: Largest JSON file (config, index, tokenizer) read from a model folder.
MAX_JSON_BYTES = 512 * 1024 * 1024

def short_text(text: object, limit: int = 80) -> str:
    """``repr`` of a name taken from a file, cut to ``limit`` characters for messages."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def os_error_message(path: Path, e: OSError) -> str:
    """A one-line description of why ``path`` could not be opened, and what to do."""
    if e.errno == errno.ELOOP:
        return f"{path}: is a symlink loop (a link that leads back to itself); replace it with the real file"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"{path}: is a broken symlink (its target {short_text(target)} does not exist); fetch the file again"
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
        raise error(os_error_message(path, e)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {file_kind(mode)}, not a regular file; refusing to read it: replace it with the real file")
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
            raise error(os_error_message(path, e)) from None
    if len(raw) > limit:
        raise error(f"{path}: is more than the {limit} bytes accepted for a JSON file; {fix}")
    return parse_json(raw, path, error, fix)
