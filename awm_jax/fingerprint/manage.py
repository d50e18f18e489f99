"""Managing the fingerprint cache: what it holds, how large it is, and least-recently-used eviction.

:func:`scan_cache` lists the entries of a cache folder (content key, the model folder it was
made from as ``meta.json`` records it, kind, shape, bytes, last use) without verifying their
checksums: a listing is for people, nothing is computed from it. :func:`prune` evicts entries,
least recently used first, until the cache fits a size cap, and removes what no run can use:
entries of another cache format, damaged entries, index files of another format or naming no
entry, and temporary folders left by killed runs.

Safety. Nothing outside ``<root>/fingerprints`` and ``<root>/index`` is touched, and no link is
followed: a link is never an entry (only removed itself when an index file is a link), and
``fingerprints`` or ``index`` being a link is refused. An entry is evicted under an exclusive
``flock`` taken without waiting (:func:`awm_jax.fingerprint.cache.hold_entry`: every process
using an entry holds a shared one, so an entry in use is skipped), renamed aside first and then
removed, so a concurrent reader either holds the entry or finds it gone and computes the
fingerprint again. A temporary folder is removed only when no writer holds it and it was not
modified for :data:`LEFTOVER_AGE_S`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import stat
import time
from pathlib import Path

from awm_jax.errors import CacheError
from awm_jax.fingerprint._entry_lock import TEMPORARY_PREFIX, take_aside
from awm_jax.fingerprint.cache import (CACHE_FORMAT, MAX_INDEX_BYTES, MAX_META_BYTES, _read_json, _Untrusted,
                                       is_content_key)

__all__ = ["LEFTOVER_AGE_S", "CacheEntry", "CacheListing", "Leftover", "PruneReport", "prune", "scan_cache"]

#: A temporary folder nobody holds is a leftover of a killed run once unmodified this long.
LEFTOVER_AGE_S = 3600.0


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One fingerprint of the cache (a folder ``fingerprints/<content key>``).

    Attributes:
      key: its content key (64 hex digits).
      state: ``"ok"``, ``"stale"`` (another cache format or algorithm: never used by this
        version) or ``"damaged"`` (``meta.json`` missing or unreadable).
      kind: ``"qk"`` (attention Q/K Grams) or ``"mlp"`` (MLP inputs); ``None`` when unknown.
      norm_gains: the norm-gain mode of its Grams, when known.
      layout: the architecture layout it was computed with, when known.
      hidden_size: ``n``, when known.
      num_layers: ``L``, when known.
      source: the model folder it was made from, as recorded when it was written (not checked).
      bytes: bytes of its files.
      last_use: when it was last found by a lookup or published (seconds since the epoch).
      index_files: index files naming it (one per model file identity, kind and norm-gain mode).
    """

    key: str
    state: str
    kind: str | None
    norm_gains: str | None
    layout: str | None
    hidden_size: int | None
    num_layers: int | None
    source: str | None
    bytes: int
    last_use: float
    index_files: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["last_use"] = _iso(self.last_use)
        return d


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A temporary folder under ``fingerprints/``: a fingerprint being written, or left by a
    killed run. ``modified``: its newest modification time (seconds since the epoch)."""

    name: str
    bytes: int
    modified: float

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "modified": _iso(self.modified)}


@dataclasses.dataclass(frozen=True)
class CacheListing:
    """What a cache folder holds.

    Attributes:
      root: the cache folder.
      entries: the fingerprints, most recently used first.
      temporary: temporary folders.
      index_bytes: bytes of the index files.
      index_files: number of index files.
      dangling_index: index files that name no entry, or are of another format.
    """

    root: Path
    entries: tuple[CacheEntry, ...]
    temporary: tuple[Leftover, ...]
    index_bytes: int
    index_files: int
    dangling_index: int

    @property
    def total_bytes(self) -> int:
        """Bytes of everything the cache holds (entries, temporary folders, index)."""
        return sum(e.bytes for e in self.entries) + sum(t.bytes for t in self.temporary) + self.index_bytes

    def to_dict(self) -> dict:
        return {"root": str(self.root), "total_bytes": self.total_bytes,
                "entries": [e.to_dict() for e in self.entries],
                "temporary": [t.to_dict() for t in self.temporary],
                "index": {"files": self.index_files, "bytes": self.index_bytes, "dangling": self.dangling_index}}


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did (or, with ``dry_run``, would do).

    Attributes:
      root: the cache folder.
      max_bytes: the size cap (``None``: none, only unusable things removed).
      dry_run: nothing was removed.
      bytes_before: the cache's size before.
      bytes_after: its size after.
      evicted: content keys of the entries removed (least recently used, stale or damaged).
      in_use: content keys of entries that would have been evicted but are in use.
      removed_temporary: names of the leftover temporary folders removed.
      removed_index: index files removed.
    """

    root: Path
    max_bytes: int | None
    dry_run: bool
    bytes_before: int
    bytes_after: int
    evicted: tuple[str, ...]
    in_use: tuple[str, ...]
    removed_temporary: tuple[str, ...]
    removed_index: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        d.update(evicted=list(self.evicted), in_use=list(self.in_use), removed_temporary=list(self.removed_temporary))
        return d


# -- reading ---------------------------------------------------------------------------------------


def _subfolder(root: Path, name: str) -> Path | None:
    """``root/name`` when it is a real folder, ``None`` when absent.

    Raises:
      CacheError: it is a link or not a folder.
    """
    path = root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CacheError(f"{path}: cannot read the fingerprint cache ({e.strerror or e}); check the folder's "
                         "permissions or set AWM_JAX_CACHE to another folder") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"{path} is a link or a file, not a folder; awm_jax follows no links in its cache: remove "
                         "it, or set AWM_JAX_CACHE to another folder")
    return path


def _tree(path: Path) -> tuple[int, float]:
    """Bytes of the files under ``path`` and their newest modification time (links not
    followed, counted as themselves)."""
    st = os.lstat(path)
    size, newest = 0, st.st_mtime
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, newest
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue  # removed meanwhile
            newest = max(newest, st.st_mtime)
            if not stat.S_ISDIR(st.st_mode):
                size += st.st_size
    return size, newest


def _meta(folder: Path) -> tuple[str, dict]:
    """The state of an entry folder from its ``meta.json`` and the fields to list."""
    try:
        meta = _read_json(folder / "meta.json", MAX_META_BYTES)
    except (OSError, _Untrusted):
        return "damaged", {}
    if not isinstance(meta, dict):
        return "damaged", {}

    def field(name, kind):
        value = meta.get(name)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    fields = {"kind": field("kind", str), "norm_gains": field("norm_gains", str), "layout": field("layout", str),
              "hidden_size": field("n", int), "num_layers": field("num_layers", int), "source": field("source", str)}
    from awm_jax._version import ALGORITHM_VERSION

    if meta.get("format") != CACHE_FORMAT or meta.get("algorithm") != ALGORITHM_VERSION:
        return "stale", fields
    return "ok", fields


def _index_key(path: Path) -> str | None:
    """The content key an index file of this format names, or ``None``."""
    try:
        entry = _read_json(path, MAX_INDEX_BYTES)
    except (OSError, _Untrusted):
        return None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or not is_content_key(entry.get("content_key")):
        return None
    return entry["content_key"]


def _index(root: Path) -> dict[str, str | None]:
    """Index file name -> the content key it names (``None``: another format, damaged or not a file)."""
    folder = _subfolder(root, "index")
    out: dict[str, str | None] = {}
    if folder is None:
        return out
    for item in os.scandir(folder):
        out[item.name] = _index_key(Path(item.path)) if item.is_file(follow_symlinks=False) else None
    return out


def scan_cache(root: str | os.PathLike) -> CacheListing:
    """Lists a cache folder (nothing is verified or written).

    Raises:
      CacheError: ``fingerprints`` or ``index`` is a link or a file, or cannot be read.
    """
    root = Path(root)
    index = _index(root)
    named: dict[str, int] = {}
    for key in index.values():
        if key is not None:
            named[key] = named.get(key, 0) + 1
    entries, temporary = [], []
    fingerprints = _subfolder(root, "fingerprints")
    for item in os.scandir(fingerprints) if fingerprints is not None else ():
        path = Path(item.path)
        try:
            size, newest = _tree(path)
            last_use = os.lstat(path).st_mtime
        except OSError:
            continue  # removed meanwhile
        if item.name.startswith(TEMPORARY_PREFIX):
            temporary.append(Leftover(item.name, size, newest))
        elif is_content_key(item.name) and item.is_dir(follow_symlinks=False):
            state, fields = _meta(path)
            entries.append(CacheEntry(item.name, state, **fields, bytes=size, last_use=last_use,
                                      index_files=named.get(item.name, 0)))
    keys = {e.key for e in entries}
    index_bytes = 0
    for name in index:
        try:
            index_bytes += os.lstat(root / "index" / name).st_size
        except OSError:
            pass
    dangling = sum(1 for key in index.values() if key is None or key not in keys)
    entries.sort(key=lambda e: e.last_use, reverse=True)
    return CacheListing(root, tuple(entries), tuple(sorted(temporary, key=lambda t: t.name)), index_bytes, len(index),
                        dangling)


# -- removing --------------------------------------------------------------------------------------


def _unlink_index(path: Path, key: str | None) -> bool:
    """Removes an index file (a link only as itself) if it still names ``key`` and that entry's
    folder is absent (``key`` ``None``: if it is still of another format or damaged)."""
    now = _index_key(path)
    if now != key or (key is not None and os.path.lexists(path.parent.parent / "fingerprints" / key)):
        return False  # rewritten or published again meanwhile
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def prune(root: str | os.PathLike, max_bytes: int | None = None, dry_run: bool = False) -> PruneReport:
    """Evicts least-recently-used entries until the cache holds at most ``max_bytes``, and removes
    what no run of this version can use (see the module docstring).

    Args:
      root: the cache folder.
      max_bytes: the size cap; ``None``: no cap (only unusable things are removed).
      dry_run: report what would be removed, remove nothing (entries in use are not detected).

    Returns:
      What was removed.

    Raises:
      CacheError: ``fingerprints`` or ``index`` is a link or a file, or cannot be read.
    """
    listing = scan_cache(root)
    root = listing.root
    total = listing.total_bytes
    now = time.time()
    evicted: list[str] = []
    in_use: list[str] = []
    removed_temporary: list[str] = []
    doomed: list[Path] = []

    def take(name: str, force_after: float | None) -> bool:
        if dry_run:
            return True
        aside = take_aside(root / "fingerprints" / name, force_after)
        if aside is not None:
            doomed.append(aside)
        return aside is not None

    for t in listing.temporary:
        moved_aside = t.name.startswith((f"{TEMPORARY_PREFIX}evicted-", f"{TEMPORARY_PREFIX}damaged-"))
        if (moved_aside or now - t.modified >= LEFTOVER_AGE_S) and take(t.name, LEFTOVER_AGE_S):
            removed_temporary.append(t.name)
            total -= t.bytes
    unusable = [e for e in listing.entries if e.state != "ok"]
    by_age = sorted((e for e in listing.entries if e.state == "ok"), key=lambda e: e.last_use)
    for e in unusable + by_age:
        if e.state == "ok" and (max_bytes is None or total <= max_bytes):
            break
        if take(e.key, LEFTOVER_AGE_S):
            evicted.append(e.key)
            total -= e.bytes
        else:
            in_use.append(e.key)
    removed_index = 0
    for name, key in _index(root).items():
        gone = key is None or key in evicted or not os.path.lexists(root / "fingerprints" / key)
        if gone and (dry_run or _unlink_index(root / "index" / name, key)):
            removed_index += 1
    for aside in doomed:
        shutil.rmtree(aside, ignore_errors=True)
    after = total if dry_run else scan_cache(root).total_bytes
    return PruneReport(root, max_bytes, dry_run, listing.total_bytes, after, tuple(evicted), tuple(in_use),
                       tuple(removed_temporary), removed_index)
