"""Atomic file writes: a temporary file in the same folder, fsync-ed, then ``os.replace``.

A reader sees either the old file or the complete new one, whatever happens to the writer.

What is replaced is decided before a byte is written (:func:`write_target`):

- a regular file, or a path where nothing exists yet (its folder must exist and be writable);
- a symlink, deliberately one of two ways. With ``follow_symlinks=True`` (a path the user
  named, such as ``--json latest.json`` pointing into a results folder) the regular file it
  leads to is replaced atomically and the link kept; a link to a missing file creates that file,
  a link loop or a link to anything but a regular file is refused. With
  ``follow_symlinks=False`` (the default: files awm_jax names inside its own folders, the
  fingerprint cache, the audit's ``--out``) the link itself is replaced by the new file, so a
  link planted there can never redirect a write elsewhere;
- anything else that exists (a folder, a device such as ``/dev/null``, a FIFO, a socket) is
  refused: replacing it would destroy it (run as root, ``/dev/null`` itself).

A new file gets the permissions ``0o666`` less the process umask, as ``open()`` would give it; a
replaced file keeps its permission bits. A temporary file still pending when the process is
interrupted is removed by :func:`discard_pending` (the CLI's Ctrl-C handler calls it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "write_target", "pending", "discard_pending"]

_PENDING: set[str] = set()
_PENDING_LOCK = threading.Lock()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def write_target(path: str | os.PathLike, *, follow_symlinks: bool = False) -> Path:
    """The file :func:`atomic_write` of ``path`` would replace or create.

    ``path`` itself, or with ``follow_symlinks`` for a symlink the file it finally leads to.
    Nothing is written.

    Raises:
      OSError: its ``strerror`` says why: the path (or the link's target) exists and is not a
        regular file (``errno.EEXIST``), is a symlink loop (``ELOOP``), its folder is missing
        (``ENOENT``) or not writable (``EACCES``).
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if follow_symlinks and path.is_symlink() else path
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise OSError(e.errno, f"cannot inspect {target} ({e.strerror})") from None
    if mode is not None and stat.S_ISLNK(mode) and follow_symlinks:
        raise OSError(errno.ELOOP, "is a symlink loop (a link that leads back to itself)")
    if mode is not None and stat.S_ISLNK(mode):
        mode = None  # the link itself is replaced
    if mode is not None and not stat.S_ISREG(mode):
        where = "" if target == path else f" (the symlink leads to {target})"
        raise OSError(errno.EEXIST, f"is {_kind(mode)}{where}, not a regular file; refusing to replace it")
    folder = target.parent
    if not folder.is_dir():
        raise OSError(errno.ENOENT, f"folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, f"folder {folder} is not writable")
    return target


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def pending(path: str | os.PathLike) -> Iterator[None]:
    """Marks a temporary file or folder as in progress while the context is open, so that
    :func:`discard_pending` removes it if the process is interrupted (for writers other than
    :func:`atomic_write`, e.g. a cache entry assembled in a temporary folder)."""
    name = os.fspath(path)
    with _PENDING_LOCK:
        _PENDING.add(name)
    try:
        yield
    finally:
        with _PENDING_LOCK:
            _PENDING.discard(name)


def discard_pending() -> None:
    """Removes the temporary files and folders of writes in progress (for an interrupt handler
    about to exit the process)."""
    # An interrupt handler may run while this thread (or a stopped one) holds the lock: wait a
    # little, then read the set without it.
    locked = _PENDING_LOCK.acquire(timeout=0.5)
    try:
        names = list(_PENDING)
    except RuntimeError:  # changed while copied
        names = []
    finally:
        if locked:
            _PENDING_LOCK.release()
    for name in names:
        try:
            if os.path.isdir(name) and not os.path.islink(name):
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, data: bytes, *, follow_symlinks: bool = False) -> None:
    """Writes ``data`` to ``path`` atomically; the temporary file is removed on any failure.

    See the module docstring for what is replaced (only regular files; a symlink itself, or with
    ``follow_symlinks`` the regular file it leads to) and the permissions the file gets.

    Raises:
      OSError: the path is not a regular file (see :func:`write_target`), the folder is missing or
        not writable, or the disk is full.
    """
    target = write_target(path, follow_symlinks=follow_symlinks)
    try:
        st = os.lstat(target)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_umask()
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with pending(tmp):
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
