"""A verified on-disk cache of compiled XLA executables, for the command lines.

Every command compiles the same few kernels for models of the same widths (0.3 s of a warm
TinyLlama-shaped pair, a sixth of it). JAX can keep compiled executables on disk, its persistent
compilation cache, but loads an entry as it finds it, and a damaged entry is damaged machine code:
a wrong score, not an error. :func:`enable` therefore puts JAX's file cache behind
:class:`VerifiedCache`, which stores each executable with its XXH3-128 digest and hands JAX only
entries whose digest matches; any other entry is deleted and counts as a miss (compiled again and
written anew). Entries live in ``<cache root>/compiled/`` (the fingerprint cache's root).

JAX treats its compilation cache as trusted: whoever can write to it can run code in the process.
The folder is therefore created private (mode 0700), and a folder owned by another user or
writable by others is not used. JAX names the cache's internals privately: when they are not as
expected (another JAX release), or a cache is already configured, :func:`enable` leaves
compilation as it is. Keys are JAX's own (the program, the compile options, the backend and the
JAX and jaxlib versions), so an upgrade of either starts new entries; once the folder passes
``MAX_BYTES``, the entries used least recently are deleted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import xxhash

try:  # JAX's private cache interface: without it (another JAX release) enable() does nothing
    from jax._src import compilation_cache as _jax_cache
    from jax._src.compilation_cache_interface import CacheInterface
except ImportError:
    _jax_cache, CacheInterface = None, object

__all__ = ["FOLDER", "MAX_BYTES", "VerifiedCache", "enable"]

#: The folder under the cache root.
FOLDER = "compiled"
#: Size above which the least recently used entries are deleted, down to half of it.
MAX_BYTES = 256 * 1024 * 1024
_DIGEST_BYTES = 16
_SUFFIX = "-cache"


def _digest(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def _private_folder(folder: Path) -> bool:
    """Creates ``folder`` (mode 0700) if needed; whether it belongs to this user alone."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(folder)
    except OSError:
        return False
    owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owned and stat.S_ISDIR(info.st_mode) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trim(folder: Path, max_bytes: int) -> None:
    """Deletes the least recently used entries, down to half of ``max_bytes``, once the folder
    holds more than ``max_bytes``."""
    try:
        entries = sorted((max(s.st_atime, s.st_mtime), s.st_size, e.path)
                         for e in os.scandir(folder) if e.is_file() for s in (e.stat(),))
    except OSError:
        return
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return
    for _, size, path in entries:
        if total <= max_bytes // 2:
            break
        try:
            os.unlink(path)
            total -= size
        except OSError:
            pass


class VerifiedCache(CacheInterface):
    """A JAX compilation cache in a folder, one file ``<key>-cache`` per entry holding its
    XXH3-128 digest and the executable as JAX gave it (see the module)."""

    def __init__(self, folder: str | os.PathLike):
        self._path = Path(folder)

    def _file(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad compilation cache key {key!r}")
        return self._path / f"{key}{_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        """The executable stored under ``key`` when its digest matches; else ``None`` (and a
        damaged entry is deleted, so the fresh compilation is written in its place)."""
        path = self._file(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        value = blob[_DIGEST_BYTES:]
        if len(blob) > _DIGEST_BYTES and _digest(value) == blob[:_DIGEST_BYTES]:
            return value
        try:
            path.unlink()
        except OSError:
            pass
        return None

    def put(self, key: str, value: bytes) -> None:
        """Writes ``key``'s entry atomically: a reader finds the old file, the new one or none."""
        path = self._file(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(_digest(value) + value)
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass


def enable(root: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bool:
    """Makes JAX keep compiled executables in ``root/compiled``, verified (see the module).

    Call before the first compilation. Returns whether the cache is in use: ``False`` when the
    folder cannot be made private, when this JAX's cache internals are not the expected ones, or
    when a compilation cache is already configured.
    """
    folder = Path(root) / FOLDER
    if not _private_folder(folder):
        return False
    try:
        import jax

        cc = _jax_cache
        with cc._cache_initialized_mutex:
            if cc._cache is not None or cc._cache_initialized or jax.config.jax_compilation_cache_dir:
                return False
            cc._cache, cc._cache_initialized = VerifiedCache(folder), True
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except AttributeError:  # no JAX cache internals as expected (or none at all)
        return False
    _trim(folder, max_bytes)
    return True
