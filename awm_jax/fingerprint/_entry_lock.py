"""Locks on the fingerprint cache's entry folders: shared while an entry is used, exclusive to evict it.

Every process that reads or writes an entry holds a shared ``flock`` on its folder
(:func:`hold_entry`, from before the entry is verified until its Grams are no longer in use);
eviction (:func:`take_aside`) takes an exclusive one without waiting, so an entry in use is
never evicted, and renames the folder aside while it holds it, so a reader either holds the
entry or finds it gone. Locks are advisory and taken on folders opened without following links.
Where the file system has no locks, holding is a no-op and eviction falls back to the age of
the folder.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
import weakref
from pathlib import Path

__all__ = ["TEMPORARY_PREFIX", "EntryLock", "hold_entry", "take_aside"]

#: What a temporary folder's name starts with (writers, folders moved aside for removal).
TEMPORARY_PREFIX = ".tmp-"


class EntryLock:
    """A shared ``flock`` on an entry's folder, held while its Grams may be read (released when
    this object goes): eviction skips a folder anyone holds. Where the file system has no locks,
    it holds nothing (best effort)."""

    def __init__(self, fd: int | None):
        self.fd = fd
        if fd is not None:
            weakref.finalize(self, os.close, fd)

    def touch(self) -> None:
        """Records a use: sets the folder's modification time to now (best effort: a read-only
        cache is used without recording)."""
        if self.fd is not None:
            try:
                os.utime(self.fd)
            except OSError:
                pass


def hold_entry(folder: Path) -> EntryLock | None:
    """Takes a shared lock on an entry's folder, checked to still be at its path after locking.

    Returns:
      The lock; ``None`` when there is no folder there (never was, evicted, or being evicted).
      A link or a non-folder gives a lock holding nothing: verifying the entry says what is wrong.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return EntryLock(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # an eviction holds it
        os.close(fd)
        return None
    except OSError:
        pass  # no locks on this file system
    try:
        held, now = os.fstat(fd), os.lstat(folder)
    except OSError:
        os.close(fd)
        return None
    if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):  # moved aside while we waited
        os.close(fd)
        return None
    return EntryLock(fd)


def take_aside(folder: Path, force_after: float | None) -> Path | None:
    """Moves a folder nobody holds aside for removal (under an exclusive lock taken without
    waiting); returns where it went, or ``None``: held by a reader or writer, gone, or not a folder.

    Args:
      folder: ``fingerprints/<name>``.
      force_after: where the file system has no locks, take it anyway when it was not modified
        for this many seconds (``None``: never).
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # in use
        except OSError:
            if force_after is None or time.time() - os.fstat(fd).st_mtime < force_after:
                return None
        try:
            held, now = os.fstat(fd), os.lstat(folder)
        except OSError:
            return None
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            return None
        aside = folder.parent / f"{TEMPORARY_PREFIX}evicted-{uuid.uuid4().hex}"
        try:
            os.rename(folder, aside)  # while locked: from here no reader can take it
        except OSError:
            return None
        return aside
    finally:
        os.close(fd)
