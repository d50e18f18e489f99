"""The fingerprint cache on disk: keys, file identity, checksums, verified reads, atomic publish.

``$AWM_JAX_CACHE`` (else ``$XDG_CACHE_HOME/awm_jax``, else ``~/.cache/awm_jax``)::

    fingerprints/<content key>/meta.json, gram_q.f32, gram_k.f32   # float32, see below
    fingerprints/<content key>/meta.json, gram_mlp.f32              # MLP inputs (optional kind)
    index/<file key>-<kind>-<norm gains>.json                       # -> content key

Each Gram file holds, per layer, the upper triangle of the symmetric Gram row by row
(:mod:`awm_jax.fingerprint._packed`: ``[L, n (n + 1) / 2]``, half the bytes of the full matrix,
unpacked when read), then, per layer, the HSIC parts of the Gram (``[L, 2 n + 4]``,
:func:`awm_jax.fingerprint.grams.parts_len`): what a pair needs of each target Gram besides the
cross term, read instead of recomputed (a pass over every Gram of a warm pair).

Keys. The *content key* (64 hex digits) is the SHA-256 of the algorithm version, the layout and
the bytes of every Q/K tensor used. The *file key* (40 hex digits) hashes the cache format, the
layout, the config and, per weight file, its path, size, modification and change times
(``st_ctime_ns`` cannot be set back by ``cp -p``, ``rsync -t`` or ``touch``), device and inode,
plus a content probe (SHA-256 of the first and last 64 KiB and four sampled 4 KiB blocks), so a
second comparison finds the fingerprint without reading any Q/K weight again, and a file that
was rewritten, even with its size and times restored, gets a new file key and a recompute.

Trust. Nothing read from the cache is believed without a check:

* an index entry is JSON naming its own file key and kind (two models' index files swapped
  are caught) and a content key that must be 64 lowercase hex digits (never a path);
* ``meta.json`` names its content key, the shape, and the XXH3-128 of every 32 MiB block of
  every Gram file; each Gram file is opened without following links and hashed in full when
  the entry is opened (once per process per entry, on several threads) and compared;
* every later read of a Gram file (positioned reads and memory maps) checks that the file is
  the one verified (device, inode, size, times) and re-verifies it otherwise;
* the Grams of one layer (picked by the file key) are checked against that layer's weights
  without forming a Gram: ``K v = W^T (W v)`` for a fixed random sign vector ``v`` (Freivalds'
  check, three matrix-vector products), so an index entry naming another model's intact
  fingerprint is caught too. This reads one layer's Q/K weights on a warm run.

A damaged or stale entry is dropped with one ``awm_jax: warning: ...`` line on stderr and the
fingerprint is computed again; an index naming a folder that is gone (evicted) is a plain miss. Publishing replaces a damaged folder (the damaged one is
renamed aside first, then removed), and keeps an existing valid folder of the same content key
(another process got there first). Every write goes to a temporary name and is published
with ``os.replace``, so a process killed at any point leaves either no entry or a complete one;
the index file is fsync-ed, the Gram files are not (a power loss may damage them: the
checksums catch it). A cache folder that cannot be written is warned about and the fingerprint
is computed without it.

Use and eviction (:mod:`awm_jax.fingerprint.manage`). A process holds a shared ``flock`` on
the folder of every entry it reads or writes (taken before the entry is verified, released
when its :class:`GramSet` goes), and a lookup that finds an entry sets the folder's
modification time: its last use, which orders eviction (one ``utimensat`` call; it is not
trusted for anything else, and the files and their checks are untouched). Eviction takes an
exclusive lock without waiting (an entry in use is skipped), renames the folder aside and
removes it; a reader that finds its entry gone, or moved aside while it waited, computes the
fingerprint again. With ``$AWM_JAX_CACHE_MAX_GB`` set, every publish evicts least-recently-used
entries until the cache fits.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from awm_jax._version import ALGORITHM_VERSION
from awm_jax.errors import CacheError, UsageError, warn
from awm_jax.fingerprint._checksum import BLOCK_BYTES, DIGEST_CHARS, DIGEST_NAME, block_count, file_digests
from awm_jax.fingerprint._entry_lock import TEMPORARY_PREFIX, EntryLock, hold_entry
from awm_jax.fingerprint._packed import packed_len
from awm_jax.fingerprint.grams import KINDS, GramSet, layer_matrices, parts_len
from awm_jax.options import DEFAULT_NORM_GAINS
from awm_jax.io.atomic import atomic_write
from awm_jax.layouts import ResolvedLayout

__all__ = ["CACHE_FORMAT", "MAX_GB_ENV", "FingerprintCache", "FileStamp", "VerifiedEntry", "cap_from_env",
           "default_cache_dir", "file_key", "gram_file_bytes", "is_content_key"]

#: Version of the cache's files (index, meta.json, checksums); part of every file key.
CACHE_FORMAT = 5
#: Hex digits of a content key (SHA-256) and of a file key (BLAKE2b, 20 bytes).
CONTENT_KEY_CHARS, FILE_KEY_CHARS = 64, 40
#: Size limits of the JSON files read from the cache (a damaged file is not read without bound).
MAX_INDEX_BYTES, MAX_META_BYTES = 64 * 1024, 16 * 1024 * 1024
#: Content probe of each weight file: head and tail bytes, and sampled blocks in between.
PROBE_EDGE_BYTES, PROBE_BLOCK_BYTES, PROBE_SAMPLES = 64 * 1024, 4096, 4
#: Largest relative difference between ``K v`` and ``W^T (W v)`` of a cached Gram and its weights
#: (float32 rounding is below 1e-5; another model's Gram differs by order 1).
WEIGHT_CHECK_RTOL = 1e-3

#: Environment variable capping the cache's size (gigabytes of 10^9 bytes; unset: no cap).
MAX_GB_ENV = "AWM_JAX_CACHE_MAX_GB"

_HEX = re.compile(r"[0-9a-f]+")


def gram_file_bytes(n: int, layers: int) -> int:
    """Bytes of one Gram file of an entry: ``layers`` packed upper triangles of ``[n, n]`` float32,
    then ``layers`` records of HSIC parts."""
    return layers * (packed_len(n) + parts_len(n)) * 4


def cap_from_env() -> int | None:
    """The size cap in bytes from ``$AWM_JAX_CACHE_MAX_GB``, or ``None`` when it is unset.

    Raises:
      UsageError: it is not a number of gigabytes >= 0.
    """
    raw = os.environ.get(MAX_GB_ENV, "").strip()
    if not raw:
        return None
    try:
        gb = float(raw)
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and gb >= 0):
        raise UsageError(f"{MAX_GB_ENV}={raw[:40]!r} is not a size in gigabytes; set a number >= 0 or unset it")
    return int(gb * 1e9)


def default_cache_dir() -> Path:
    """``$AWM_JAX_CACHE``, else ``$XDG_CACHE_HOME/awm_jax``, else ``~/.cache/awm_jax``."""
    if os.environ.get("AWM_JAX_CACHE"):
        return Path(os.environ["AWM_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "awm_jax"


def is_hex_key(value: object, chars: int) -> bool:
    """Whether ``value`` is a string of exactly ``chars`` lowercase hex digits."""
    return isinstance(value, str) and len(value) == chars and _HEX.fullmatch(value) is not None


def is_content_key(value: object) -> bool:
    """Whether ``value`` is a content key (64 lowercase hex digits): never a path."""
    return is_hex_key(value, CONTENT_KEY_CHARS)


# -- file identity ---------------------------------------------------------------------------------


def _probe(path: Path, size: int) -> bytes:
    """SHA-256 of a few bytes of a weight file: head, tail and ``PROBE_SAMPLES`` blocks between."""
    h = hashlib.sha256()
    spans = [(0, PROBE_EDGE_BYTES), (max(size - PROBE_EDGE_BYTES, 0), PROBE_EDGE_BYTES)]
    spans += [(size * (i + 1) // (PROBE_SAMPLES + 1), PROBE_BLOCK_BYTES) for i in range(PROBE_SAMPLES)]
    with open(path, "rb", buffering=0) as f:
        for offset, length in spans:
            h.update(os.pread(f.fileno(), length, offset))
    return h.digest()


def file_key(resolved: ResolvedLayout) -> str:
    """The key under which a checkpoint's fingerprint is indexed (40 hex digits).

    Raises:
      OSError: a weight file cannot be read.
    """
    ckpt = resolved.ckpt
    h = hashlib.blake2b(digest_size=FILE_KEY_CHARS // 2)
    h.update(f"{ALGORITHM_VERSION}|cache{CACHE_FORMAT}|{resolved.name}|{resolved.prefix}".encode())
    h.update(json.dumps(ckpt.config, sort_keys=True).encode())
    for f in ckpt.files:
        st = os.stat(f)
        h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_dev}|{st.st_ino}|".encode())
        h.update(_probe(f, st.st_size))
    return h.hexdigest()


class FileStamp(NamedTuple):
    """What identifies one version of a cache file: if any field changes, it is another file."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- verification ----------------------------------------------------------------------------------


class _Untrusted(Exception):
    """An entry that cannot be used; the message says why. ``stale``: written by another version
    of the cache (replaced without a warning), else damaged."""

    def __init__(self, message: str, stale: bool = False):
        super().__init__(message)
        self.stale = stale


#: Files verified in this process: (path, stamp) -> block digests (hashing is done once).
_VERIFIED: dict[tuple[str, FileStamp], tuple[str, ...]] = {}
_VERIFIED_LOCK = threading.Lock()
#: Entries already warned about in this process (one warning per damaged entry).
_WARNED: set[str] = set()


def _warn_once(where: Path, message: str) -> None:
    """``warn(message)``, unless a warning about ``where`` was given already in this process."""
    if str(where) not in _WARNED:
        _WARNED.add(str(where))
        warn(message)


def _warn_damaged(where: Path, reason: str) -> None:
    _warn_once(where, f"{where}: cached fingerprint is damaged or stale ({reason}); computing it again")


def _open_nofollow(path: Path) -> int:
    """A read-only descriptor of a regular file (not a link, not a FIFO: nothing that blocks)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Untrusted(f"{path.name} is not a regular file")
    return fd


def _read_json(path: Path, limit: int) -> Any:
    """A small JSON file of the cache (at most ``limit`` bytes), not following links."""
    try:
        fd = _open_nofollow(path)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as e:
        raise _Untrusted(f"{path.name}: {e.strerror or e}") from None
    try:
        raw = os.read(fd, limit + 1)
    except OSError as e:
        raise _Untrusted(f"{path.name}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise _Untrusted(f"{path.name} is larger than {limit} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _Untrusted(f"{path.name} is not valid JSON") from None


@dataclasses.dataclass
class VerifiedEntry:
    """A cache folder whose Gram files matched their checksums when opened: the
    :class:`~awm_jax.fingerprint.grams.ReadGuard` of its :class:`GramSet`.

    Attributes:
      folder: the entry's folder.
      digests: per file name, the block digests from ``meta.json`` (verified).
      stamps: per file name, the identity of the file that was verified.
      lock: the shared lock on the folder (kept as long as the entry is in use).
    """

    folder: Path
    digests: dict[str, tuple[str, ...]]
    stamps: dict[str, FileStamp]
    lock: EntryLock | None = dataclasses.field(default=None, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def opened(self, name: str, fd: int) -> None:
        """Checks that the open file ``fd`` is the verified ``name``; a file replaced since (by
        another process healing the entry) is verified again against the same checksums.

        Raises:
          CacheError: the file no longer matches the checksums it was verified against.
        """
        stamp = FileStamp.of(os.fstat(fd))
        with self._lock:
            if stamp == self.stamps.get(name):
                return
        try:
            _verify_file(self.folder / name, fd, stamp, self.digests[name])
        except _Untrusted as e:
            raise CacheError(f"{self.folder}: the cached fingerprint changed while in use ({e}); rerun (it is "
                             "verified and, if damaged, computed again)") from None
        with self._lock:
            self.stamps[name] = stamp


def _verify_file(path: Path, fd: int, stamp: FileStamp, expected: tuple[str, ...]) -> None:
    """Hashes one open Gram file (unless this version of it was verified already) and compares.

    Raises:
      _Untrusted: wrong size, unreadable, or a block that does not match its checksum.
    """
    if block_count(stamp.size) != len(expected):
        raise _Untrusted(f"{path.name} has {stamp.size} bytes, not the {len(expected)} blocks recorded")
    with _VERIFIED_LOCK:
        if _VERIFIED.get((str(path), stamp)) == expected:
            return
    try:
        got = file_digests(fd, stamp.size, list(expected))
    except OSError as e:
        raise _Untrusted(f"{path.name}: {e.strerror or e}") from None
    if tuple(got) != expected:
        raise _Untrusted(f"{path.name}: block {len(got) - 1} of {len(expected)} does not match its checksum")
    with _VERIFIED_LOCK:
        _VERIFIED[(str(path), stamp)] = expected


def _meta_digests(meta: Any, key: str, n: int, layers: int, kind: str, norm_gains: str) -> dict[str, tuple[str, ...]]:
    """The block digests ``meta.json`` records for each file of ``kind``, after checking that it
    describes this entry (content key, algorithm, shape, kind, block size).

    Raises:
      _Untrusted: it does not.
    """
    if not isinstance(meta, dict):
        raise _Untrusted("meta.json is not an object")
    if meta.get("format") != CACHE_FORMAT or meta.get("algorithm") != ALGORITHM_VERSION:
        raise _Untrusted(f"written by another version (format {meta.get('format')!r})", stale=True)
    want = {"content_key": key, "n": n, "num_layers": layers, "kind": kind, "norm_gains": norm_gains,
            "block_bytes": BLOCK_BYTES}
    for field, value in want.items():
        if meta.get(field) != value or type(meta.get(field)) is not type(value):
            raise _Untrusted(f"meta.json {field} is {str(meta.get(field))[:80]!r}, expected {value!r}")
    files = meta.get("files")
    size = gram_file_bytes(n, layers)
    if not isinstance(files, dict) or sorted(files) != sorted(KINDS[kind]):
        raise _Untrusted("meta.json does not list the Gram files")
    out = {}
    for name in KINDS[kind]:
        record = files[name]
        blocks = record.get(DIGEST_NAME) if isinstance(record, dict) else None
        if (not isinstance(record, dict) or record.get("bytes") != size or not isinstance(blocks, list)
                or len(blocks) != block_count(size) or not all(is_hex_key(b, DIGEST_CHARS) for b in blocks)):
            raise _Untrusted(f"meta.json has no valid checksums of {name}")
        out[name] = tuple(blocks)
    return out


def verify_entry(folder: Path, key: str, n: int, layers: int, kind: str,
                 norm_gains: str = DEFAULT_NORM_GAINS, lock: EntryLock | None = None) -> VerifiedEntry:
    """Opens a cache entry and verifies every Gram file against the checksums in its ``meta.json``.

    Args:
      folder: ``fingerprints/<key>``.
      key: its content key.
      n: hidden size the Grams must have.
      layers: layers the Grams must have.
      kind: the fingerprint kind (a key of ``KINDS``).
      norm_gains: the norm-gain mode its Grams must have been computed in.
      lock: the shared lock on the folder (from :func:`hold_entry`), kept with the entry.

    Returns:
      The verified entry (the identities of the files that were hashed).

    Raises:
      _Untrusted: the folder is missing, a link, or anything in it is damaged or stale.
    """
    try:
        st = os.lstat(folder)
    except OSError as e:
        raise _Untrusted(f"folder {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _Untrusted("not a folder")
    try:
        meta = _read_json(folder / "meta.json", MAX_META_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        raise _Untrusted("meta.json is missing") from None
    digests = _meta_digests(meta, key, n, layers, kind, norm_gains)
    stamps = {}
    for name in KINDS[kind]:
        path = folder / name
        try:
            fd = _open_nofollow(path)
        except OSError as e:
            raise _Untrusted(f"{name}: {e.strerror or e}") from None
        try:
            stamps[name] = FileStamp.of(os.fstat(fd))
            if stamps[name].size != gram_file_bytes(n, layers):
                raise _Untrusted(f"{name} has {stamps[name].size} bytes, expected {gram_file_bytes(n, layers)}")
            _verify_file(path, fd, stamps[name], digests[name])
        finally:
            os.close(fd)
    return VerifiedEntry(folder, digests, stamps, lock)


def check_against_weights(resolved: ResolvedLayout, grams: GramSet, fkey: str) -> None:
    """Checks one layer of cached Grams against the checkpoint's weights (Freivalds' check).

    For the layer picked by the file key and each Gram ``K`` of the kind, with its weights
    ``W`` (``[rows, n]``) and a fixed random sign vector ``v`` (``[n]``), ``K v`` must equal
    ``W^T (W v)`` to ``WEIGHT_CHECK_RTOL`` (relative, 2-norm). Costs one layer's weight read and
    three matrix-vector products.

    Raises:
      _Untrusted: the Grams are not those of these weights.
    """
    layer = int(fkey[:8], 16) % grams.num_layers
    v = np.random.default_rng(0).choice(np.array([-1.0, 1.0], np.float32), grams.n)
    for name, w, k in zip(KINDS[grams.kind], layer_matrices(resolved, layer, grams.kind, grams.norm_gains),
                          grams.chunk(layer, layer + 1)):
        w = np.asarray(w, np.float32)
        want = (w.T @ (w @ v)).astype(np.float64)
        got = (k[0] @ v).astype(np.float64)
        scale = max(float(np.linalg.norm(want)), float(np.linalg.norm(got)), np.finfo(np.float32).tiny)
        if not float(np.linalg.norm(got - want)) <= WEIGHT_CHECK_RTOL * scale:  # NaN fails too
            raise _Untrusted(f"layer {layer} of {name} is not the Gram of the checkpoint's weights")


def _remove(path: Path) -> None:
    """Removes a file, link or folder tree; errors are ignored (best effort)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


# -- the cache -------------------------------------------------------------------------------------


class FingerprintCache:
    """The on-disk fingerprint cache (see the module docstring for its layout and checks).

    Args:
      root: the cache folder (default :func:`default_cache_dir`).
      max_bytes: size cap: after each publish, least-recently-used entries not in use are
        evicted until the cache fits (default: ``$AWM_JAX_CACHE_MAX_GB``; ``None``: no cap).

    Raises:
      UsageError: ``$AWM_JAX_CACHE_MAX_GB`` is not a size.
    """

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else cap_from_env()
        self._writing: dict[Path, EntryLock | None] = {}  # temporary folders being written -> their locks

    def _index(self, key: str, kind: str, norm_gains: str) -> Path:
        return self.root / "index" / f"{key}-{kind}-{norm_gains}.json"

    def _content_key(self, index: Path, fkey: str, kind: str, norm_gains: str) -> str:
        """The content key an index file names, after checking it is this checkpoint's index.

        Raises:
          FileNotFoundError, NotADirectoryError: there is no index file.
          _Untrusted: it is damaged, belongs to another checkpoint or kind, or names a path.
        """
        entry = _read_json(index, MAX_INDEX_BYTES)
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            raise _Untrusted("index entry of another format")
        if entry.get("file_key") != fkey or entry.get("kind") != kind or entry.get("norm_gains") != norm_gains:
            raise _Untrusted("index entry of another checkpoint or kind")
        key = entry.get("content_key")
        if not is_content_key(key):
            raise _Untrusted(f"index entry names {str(key)[:80]!r}, not a content key")
        return key

    def identify(self, resolved: ResolvedLayout) -> str | None:
        """The checkpoint's file key now, or ``None`` when its files cannot be read."""
        try:
            return file_key(resolved)
        except OSError:
            return None

    def lookup(self, resolved: ResolvedLayout, kind: str = "qk", fkey: str | None = None,
               norm_gains: str = DEFAULT_NORM_GAINS) -> GramSet | None:
        """The cached Grams of this checkpoint, verified, or ``None``: no entry, or a damaged or
        stale one (dropped, with one warning line on stderr).

        Args:
          resolved: the checkpoint.
          kind: the fingerprint kind.
          fkey: its file key (:meth:`identify`), when already computed.
          norm_gains: the norm-gain mode (each mode has its own entry).
        """
        fkey = fkey or self.identify(resolved)
        if fkey is None:
            return None  # the weights cannot be read: computing the fingerprint says why
        index = self._index(fkey, kind, norm_gains)
        where = index
        try:
            key = self._content_key(index, fkey, kind, norm_gains)
            where = self.root / "fingerprints" / key
            lock = hold_entry(where)  # before verifying: an eviction cannot take the folder away from now on
            if lock is None:
                return None  # evicted: computed again without a warning
            verified = verify_entry(where, key, resolved.hidden_size, resolved.num_layers, kind, norm_gains, lock)
            grams = GramSet(resolved.num_layers, resolved.hidden_size, kind, folder=where, key=key, guard=verified,
                            norm_gains=norm_gains)
            where = index  # the entry is intact: if it is not these weights', the index is wrong
            try:
                check_against_weights(resolved, grams, fkey)
            except _Untrusted:
                _WARNED.add(str(grams.folder))  # publishing replaces it (if it is under this key): one warning
                raise
            lock.touch()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except _Untrusted as e:
            _warn_damaged(where, str(e))
            _remove(index)  # a damaged folder is replaced when the fingerprint is published again
            return None
        except OSError:
            return None  # the weights cannot be read: computing the fingerprint says why
        return grams

    def new_folder(self) -> Path | None:
        """A fresh temporary folder inside the cache to write a fingerprint into, or ``None`` (with
        a warning) when the cache folder cannot be written."""
        try:
            (self.root / "fingerprints").mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root / "fingerprints", prefix=TEMPORARY_PREFIX))
            self._writing[tmp] = hold_entry(tmp)  # held through publishing: never taken for a leftover
            return tmp
        except OSError as e:
            _warn_once(self.root, f"{self.root}: cannot write the fingerprint cache ({e.strerror or e}); computing "
                       "without it (set AWM_JAX_CACHE to a writable folder, or pass --no-cache)")
            return None

    def discard(self, tmp: Path) -> None:
        """Removes a temporary folder from :meth:`new_folder` that will not be published."""
        shutil.rmtree(tmp, ignore_errors=True)
        self._writing.pop(tmp, None)

    def publish(self, tmp: Path, resolved: ResolvedLayout, key: str, kind: str,
                digests: dict[str, list[str]], fkey: str | None = None,
                norm_gains: str = DEFAULT_NORM_GAINS) -> GramSet:
        """Moves a completed fingerprint into place and indexes it by the checkpoint's file key.

        Args:
          tmp: the temporary folder (from :meth:`new_folder`) holding the kind's Gram files.
          resolved: the checkpoint.
          key: its content key.
          kind: the fingerprint kind.
          digests: per Gram file, its block checksums (computed while it was written).
          fkey: the file key from before the weights were read: when the files changed since, the
            entry is published but not indexed (it may mix two versions of the weights).
          norm_gains: the norm-gain mode the Grams were computed in.

        Returns:
          The published Grams (the ones written, or an identical valid entry already in place).

        Raises:
          OSError: the cache cannot be written.
        """
        if not is_content_key(key):
            raise ValueError(f"not a content key: {key!r}")
        n, layers = resolved.hidden_size, resolved.num_layers
        meta = {"format": CACHE_FORMAT, "content_key": key, "algorithm": ALGORITHM_VERSION, "n": n,
                "num_layers": layers, "layout": resolved.name, "kind": kind, "norm_gains": norm_gains,
                "source": str(resolved.ckpt.root),
                "block_bytes": BLOCK_BYTES,
                "files": {name: {"bytes": gram_file_bytes(n, layers), DIGEST_NAME: digests[name]}
                          for name in KINDS[kind]}}
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = self.root / "fingerprints" / key
        now = self.identify(resolved)
        verified = self._place(tmp, final, resolved, key, kind, {k: tuple(v) for k, v in digests.items()},
                               now or fkey or key, norm_gains, self._writing.pop(tmp, None))
        grams = GramSet(layers, n, kind, folder=final, key=key, guard=verified, norm_gains=norm_gains)
        if now is None or (fkey is not None and now != fkey):
            warn(f"{resolved.ckpt.root}: the weight files changed while their fingerprint was computed; it is "
                 "used for this run but not indexed (run again once the files are complete)")
        else:
            index = self._index(now, kind, norm_gains)
            index.parent.mkdir(parents=True, exist_ok=True)
            if index.is_dir() and not index.is_symlink():
                _remove(index)
            atomic_write(index, json.dumps({"format": CACHE_FORMAT, "file_key": now, "kind": kind,
                                            "norm_gains": norm_gains, "content_key": key}).encode())
        self.enforce_cap()
        return grams

    def enforce_cap(self) -> None:
        """Evicts least-recently-used entries not in use until the cache fits :attr:`max_bytes`
        (nothing without a cap; entries in use stay, so the cache may exceed the cap until they
        are released). Never fails: a problem is one warning line."""
        if self.max_bytes is None:
            return
        from awm_jax.fingerprint.manage import prune

        try:
            prune(self.root, self.max_bytes)
        except (OSError, CacheError) as e:
            _warn_once(self.root / "cap", f"{self.root}: cannot evict fingerprints to keep the cache under its size "
                       f"cap ({e}); the cache may grow past it")

    def _place(self, tmp: Path, final: Path, resolved: ResolvedLayout, key: str, kind: str,
               digests: dict[str, tuple[str, ...]], fkey: str, norm_gains: str,
               lock: EntryLock | None) -> VerifiedEntry:
        """Renames ``tmp`` (held by ``lock``) to ``final``. An entry already at ``final`` is kept
        when it is intact and holds the same Grams (equal checksums, or, computed elsewhere, Grams
        that pass the check against the weights): ``tmp`` is removed. Otherwise it is renamed
        aside, replaced and removed."""
        n, layers = resolved.hidden_size, resolved.num_layers
        for _ in range(4):
            try:
                os.replace(tmp, final)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
            else:
                stamps = {}
                for name in KINDS[kind]:
                    path = final / name
                    stamps[name] = FileStamp.of(os.lstat(path))
                    with _VERIFIED_LOCK:
                        _VERIFIED[(str(path), stamps[name])] = digests[name]
                return VerifiedEntry(final, dict(digests), stamps, lock)
            held = hold_entry(final)
            if held is None:
                continue  # evicted meanwhile: publish again
            try:
                existing = verify_entry(final, key, n, layers, kind, norm_gains, held)
                if existing.digests != digests:
                    check_against_weights(resolved, GramSet(layers, n, kind, folder=final, key=key, guard=existing,
                                                            norm_gains=norm_gains), fkey)
            except _Untrusted as e:
                if not e.stale:
                    _warn_damaged(final, str(e))
                aside = final.parent / f"{TEMPORARY_PREFIX}damaged-{uuid.uuid4().hex}"
                try:
                    os.rename(final, aside)
                except FileNotFoundError:
                    continue  # another process moved it aside first
                _remove(aside)
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            return existing
        raise OSError(errno.EBUSY, f"{final} keeps being replaced by another process")
