"""Per-model fingerprints: the Q and K Gram matrices of every layer, and how they are computed.

A model's Grams ``K_l = W_l^T W_l`` (``[n, n]``, float32, made exactly symmetric) depend on
that model alone; every comparison against it only permutes, sign-flips and compares them. On
disk each is stored as its upper triangle (half the bytes), unpacked when read. They are computed by
streaming a chunk of layers at a time from the checkpoint (bounded memory whatever the depth),
and kept either in memory (small models, ``--no-cache``), in a temporary folder (large models
without the cache), or in the fingerprint cache (:mod:`awm_jax.fingerprint.cache`), which
checksums them as they are written and verifies them when they are read again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import mmap
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from awm_jax._version import ALGORITHM_VERSION
from awm_jax.errors import CacheError, NumericalError
from awm_jax.fingerprint._checksum import BlockDigest
from awm_jax.fingerprint._packed import mirror_upper, pack_upper, packed_len, packed_positions, strict_lower, unpack_upper
from awm_jax.layouts import ResolvedLayout, check_norm_gains, fold_gain
from awm_jax.options import DEFAULT_NORM_GAINS
from awm_jax.progress import stage
from awm_jax.numerics import host_blas
from awm_jax.numerics.kernels import (MIN_SAMPLES, HsicParts, default_platform, gram_layers, gram_layers_host,
                                     range_shift, upper_parts)

if TYPE_CHECKING:
    from awm_jax.fingerprint.cache import FingerprintCache

__all__ = ["GramSet", "ReadGuard", "KINDS", "IN_MEMORY_BYTES", "CHUNK_BYTES", "aligned_empty", "layer_matrices",
           "model_grams", "chunk_layers_for"]

#: Grams larger than this (both projections, all layers) are kept on disk, not in memory.
IN_MEMORY_BYTES = 512 * 1024 * 1024
#: Rough device-memory budget of one chunk of layers (weights, Grams, temporaries).
CHUNK_BYTES = 768 * 1024 * 1024


#: Fingerprint kinds and their files: the attention Q/K Grams (the method), and the MLP input
#: Grams (``[gate; up]`` rows, all experts of a mixture stacked) as extra evidence.
KINDS: dict[str, tuple[str, ...]] = {"qk": ("gram_q.f32", "gram_k.f32"), "mlp": ("gram_mlp.f32",)}


#: Buffers handed to JAX are aligned so the CPU backend can use them without a copy.
BUFFER_ALIGNMENT = 64


def _open_gram(path: Path):
    """An unbuffered binary reader of a Gram file; opening never blocks (a FIFO put in its place
    opens at once and then fails the identity check of a cached set)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)


def aligned_empty(shape: tuple[int, ...], dtype=np.float32, zeroed: bool = False) -> np.ndarray:
    """An uninitialised (``zeroed``: zero) array whose data starts on a ``BUFFER_ALIGNMENT``-byte
    boundary. Large zeroed buffers come zero from the system, with no pass over them."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (np.zeros if zeroed else np.empty)(nbytes + BUFFER_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % BUFFER_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


#: ``madvise`` advice that maps a range's pages in one call, reading them if they are not cached
#: (Linux 5.14 and later; Python names it from 3.13).
_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)


def _prefault(mapped: mmap.mmap, start: int, length: int) -> None:
    """Maps ``[start, start + length)`` of a read-only map before it is read: all its pages in
    one system call rather than a fault per 4 KiB page (a 7B pair's Grams are a million pages),
    or, where the kernel cannot, asks it to read them ahead."""
    global _POPULATE_READ
    if _POPULATE_READ is not None:
        try:
            mapped.madvise(_POPULATE_READ, start, length)
            return
        except OSError:  # an older kernel: EINVAL
            _POPULATE_READ = None
    if hasattr(mmap, "MADV_WILLNEED"):
        mapped.madvise(mmap.MADV_WILLNEED, start, length)


def _runs(layers: list[int]) -> list[tuple[int, int, int]]:
    """``layers`` as runs of evenly spaced layers ``(start, step, count)``, in order:
    ``[3, 19]`` is one run of step 16, ``[0, 1, 2, 9]`` a run of step 1 and a run of one."""
    runs: list[tuple[int, int, int]] = []
    for layer in layers:
        if runs:
            start, step, count = runs[-1]
            if count == 1 and layer > start:
                runs[-1] = (start, layer - start, 2)
                continue
            if layer == start + step * count:
                runs[-1] = (start, step, count + 1)
                continue
        runs.append((layer, 1, 1))
    return runs


def chunk_layers_for(n: int, d: int, num_layers: int) -> int:
    """Layers per chunk so a chunk's weights, Grams and temporaries fit ``CHUNK_BYTES``."""
    per_layer = 4 * (3 * n * n + 2 * d * n) * 2
    return int(max(1, min(num_layers, CHUNK_BYTES // max(per_layer, 1))))


def parts_len(n: int) -> int:
    """float32 values of one layer's stored HSIC parts (after the packed layers of a Gram file):
    ``diag [n]``, ``rows [n]``, ``total``, ``self_term``, ``scale``, ``unit``
    (:class:`~awm_jax.numerics.kernels.HsicParts` of the Gram in upper form)."""
    return 2 * n + 4


def _parts_record(parts: HsicParts) -> np.ndarray:
    """One layer's parts as its stored ``[2 n + 4]`` float32 record."""
    p = jax.device_get(parts)
    return np.concatenate([p.diag, p.rows, [p.total, p.self_term, p.scale, p.unit]]).astype(np.float32)


def _parts_of(records: np.ndarray) -> HsicParts:
    """``[c, 2 n + 4]`` stored records -> :class:`HsicParts` with a leading ``c`` (numpy)."""
    n = (records.shape[1] - 4) // 2
    return HsicParts(records[:, :n], records[:, n : 2 * n], *(records[:, 2 * n + i] for i in range(4)))


def layer_parts(grams: np.ndarray) -> list[np.ndarray]:
    """The stored parts records of a stack of whole (or upper-form) Grams, one layer at a time
    (:func:`~awm_jax.numerics.kernels.upper_parts` of each Gram's upper form). Below the unbiased
    CKA's ``MIN_SAMPLES`` there are none (such a model is refused before any layer is scored):
    NaN records."""
    if grams.shape[1] < MIN_SAMPLES:
        return [np.full(parts_len(grams.shape[1]), np.nan, np.float32) for _ in grams]
    upper = np.empty(grams.shape[1:], np.float32)
    out = []
    for g in grams:
        np.copyto(upper, g)
        np.copyto(upper, 0, where=strict_lower(g.shape[0]))
        out.append(_parts_record(upper_parts(upper)))
    return out


class ReadGuard(Protocol):
    """Checks, each time a file of a cached :class:`GramSet` is opened, that it is still the file
    that was verified (see :class:`awm_jax.fingerprint.cache.VerifiedEntry`)."""

    def opened(self, name: str, fd: int) -> None:
        """Raises :class:`~awm_jax.errors.CacheError` unless the open file ``fd`` (one of the
        kind's files, ``name``) holds the verified bytes."""


@dataclasses.dataclass(frozen=True)
class GramSet:
    """Per-layer Grams of one model (one array per file of its kind), in memory or on disk.

    Attributes:
      num_layers: ``L``.
      n: hidden size.
      kind: ``"qk"`` (arrays: Q, K) or ``"mlp"`` (arrays: MLP inputs).
      folder: folder with the kind's float32 files, each the packed upper triangles of its
        Grams (``[L, n (n + 1) / 2]``, :mod:`awm_jax.fingerprint._packed`), or ``None``.
      arrays: ``[L, n, n]`` in-memory Grams, one per file of the kind (when ``folder`` is ``None``).
      key: content key (empty when not computed under the cache).
      owner: keeps a temporary folder alive as long as the set (uncached large models).
      guard: for a cache entry, checks every file opened for reading against the verified one.
      norm_gains: how the normalisation gains entered the Grams: ``"fold"`` or ``"ignore"``.
      memo: what a caller derives from these Grams alone and keeps for the set's lifetime (the
        HSIC parts of target layers: an audit scores each model against many others).
    """

    num_layers: int
    n: int
    kind: str = "qk"
    folder: Path | None = None
    arrays: tuple[np.ndarray, ...] = ()
    key: str = ""
    owner: object = dataclasses.field(default=None, repr=False, compare=False)
    guard: ReadGuard | None = dataclasses.field(default=None, repr=False, compare=False)
    norm_gains: str = DEFAULT_NORM_GAINS
    memo: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def q(self) -> np.ndarray:
        return self.arrays[0]

    @property
    def k(self) -> np.ndarray:
        return self.arrays[1]

    def chunk(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        """The Grams of layers ``[start, stop)``, one ``[stop - start, n, n]`` array per file."""
        if self.folder is None:
            return tuple(a[start:stop] for a in self.arrays)
        return self.take(list(range(start, stop)))

    def _read(self, index: int, layers: list[int], pad_to: int, upper: bool, reuse: np.ndarray | None) -> np.ndarray:
        """The Grams of ``layers`` of array ``index`` (for ``qk``: 0 the Q Grams, 1 the K Grams)
        in one aligned buffer (``reuse`` when its shape fits), zero-padded to ``pad_to`` layers;
        files on disk are unpacked from their upper triangles, a run of evenly spaced layers at a
        time (one copy per row for the whole run)."""
        shape = (max(len(layers), pad_to), self.n, self.n)
        out = reuse if reuse is not None and reuse.shape == shape else aligned_empty(shape, zeroed=upper)
        out[len(layers):] = 0
        if self.folder is None:
            np.take(self.arrays[index], layers, axis=0, out=out[: len(layers)])
            if upper:  # zeros below the diagonal, in place
                np.copyto(out[: len(layers)], 0, where=strict_lower(self.n))
            return out
        pos = 0
        for start, step, count in _runs(layers):
            with self._packed(KINDS[self.kind][index], start, start + step * (count - 1) + 1, step) as packed:
                unpack_upper(packed[::step], out[pos : pos + count], mirror=not upper)  # upper: zeros stay below
            pos += count
        return out

    @contextlib.contextmanager
    def _packed(self, name: str, start: int, stop: int, step: int = 1) -> Iterator[np.ndarray]:
        """Layers ``[start, stop)`` of one file as stored (``[stop - start, n (n + 1) / 2]``
        packed upper triangles), memory-mapped read-only for the duration of the block. The file
        is checked by the guard when opened; the kernel is asked to read ahead the pages of every
        ``step``-th layer from ``start`` (the ones the caller reads).

        Raises:
          CacheError: the file cannot be read, is shorter than its layers, or changed since it
            was verified.
        """
        path = self.folder / name
        layer_bytes = packed_len(self.n) * 4
        offset, length = start * layer_bytes, (stop - start) * layer_bytes
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            with _open_gram(path) as f:
                if self.guard is not None:
                    self.guard.opened(name, f.fileno())
                if os.fstat(f.fileno()).st_size < offset + length:
                    raise CacheError(f"{path}: cached fingerprint is truncated; delete {self.folder} and rerun (the "
                                     "fingerprint is computed again)")
                mapped = mmap.mmap(f.fileno(), offset - base + length, access=mmap.ACCESS_READ, offset=base)
        except (OSError, ValueError) as e:
            raise CacheError(f"{path}: cannot read the cached fingerprint ({e}); delete {self.folder} and rerun "
                             "(the fingerprint is computed again)") from None
        for layer in range(0, stop - start, step):
            first = offset - base + layer * layer_bytes
            page = first - first % mmap.PAGESIZE
            _prefault(mapped, page, first + layer_bytes - page)
        view = np.frombuffer(mapped, np.float32, length // 4, offset - base).reshape(stop - start, -1)
        try:
            yield view
        finally:
            del view
            try:
                mapped.close()
            except BufferError:  # a caller kept a view: the map closes when that goes
                pass

    def padded(self, layers: list[int], size: int, upper: bool = False,
               reuse: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, ...]:
        """The Grams of ``layers`` (any order), zero-padded to ``size`` layers, one array per file
        of the kind, in aligned buffers (what the jitted kernels take without a copy on the CPU).

        Args:
          layers: layer indices.
          size: layers of each array (at least ``len(layers)``).
          upper: in upper form (the upper triangles, zeros below: what the CKA kernels take for
            a target Gram, read with no transposition; an alignment needs whole Grams).
          reuse: arrays an earlier call returned with the same ``upper``, no longer in use:
            filled in place where their shapes fit (no new memory to fault in; the lower
            triangles of upper-form buffers are still zero).
        """
        reuse = reuse or (None,) * len(KINDS[self.kind])
        return tuple(self._read(i, list(layers), size, upper, reuse[i]) for i in range(len(KINDS[self.kind])))

    def take(self, layers: list[int], upper: bool = False,
             reuse: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, ...]:
        """The Grams of the given layers (any order), one ``[len(layers), n, n]`` array per file
        (``upper``, ``reuse``: as for :meth:`padded`)."""
        return self.padded(layers, len(layers), upper, reuse)

    def take_one(self, index: int, layers: list[int], upper: bool = False,
                 reuse: np.ndarray | None = None) -> np.ndarray:
        """The Grams of the given layers of one file of the kind (``index``: for ``qk``, 0 the Q
        Grams, 1 the K Grams), ``[len(layers), n, n]`` (``upper``, ``reuse``: as for :meth:`padded`)."""
        return self._read(index, list(layers), len(layers), upper, reuse)

    def upper_parts(self, index: int, layers: list[int], upper: np.ndarray | None = None) -> HsicParts:
        """The HSIC parts of the given layers of one file of the kind, each Gram's in upper form
        (:func:`~awm_jax.numerics.kernels.upper_parts`), as numpy arrays with a leading
        ``len(layers)``. A Gram file stores them after its layers; for Grams in memory they are
        computed one layer at a time (from ``upper``, those layers in upper form, when given) and
        kept in :attr:`memo`: the same bits either way.

        Raises:
          CacheError: the file cannot be read or changed since it was verified.
        """
        layers = list(layers)
        if self.folder is not None:
            return _parts_of(self._records(KINDS[self.kind][index], layers))
        memo = self.memo.setdefault(("upper-parts", index), {})
        missing = [i for i, layer in enumerate(layers) if layer not in memo]
        if missing:
            source = upper if upper is not None else self.take_one(index, layers, upper=True)
            for i, record in zip(missing, layer_parts(source[missing])):
                memo[layers[i]] = record
        return _parts_of(np.stack([memo[layer] for layer in layers]))

    def _records(self, name: str, layers: list[int]) -> np.ndarray:
        """The stored parts records of ``layers`` in one Gram file, ``[len(layers), 2 n + 4]``."""
        path = self.folder / name
        size = parts_len(self.n) * 4
        start = self.num_layers * packed_len(self.n) * 4
        out = np.empty((len(layers), parts_len(self.n)), np.float32)
        try:
            with _open_gram(path) as f:
                if self.guard is not None:
                    self.guard.opened(name, f.fileno())
                for row, layer in zip(out, layers):
                    if os.preadv(f.fileno(), [memoryview(row).cast("B")], start + layer * size) != size:
                        raise CacheError(f"{path}: cached fingerprint is truncated; delete {self.folder} and rerun "
                                         "(the fingerprint is computed again)")
        except OSError as e:
            raise CacheError(f"{path}: cannot read the cached fingerprint ({e}); delete {self.folder} and rerun "
                             "(the fingerprint is computed again)") from None
        return out

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every layer's Gram restricted to ``rows`` (rows and columns, in that order): one
        ``[L, m, m]`` float32 array ``K_l[rows][:, rows]`` per file of the kind. From disk only
        the values used are read.

        Args:
          rows: ``[m]`` indices in ``[0, n)``.
        """
        rows = np.asarray(rows, np.int64)
        if self.folder is None:
            return tuple(np.stack([np.take(np.take(a[l], rows, axis=0), rows, axis=1) for l in range(self.num_layers)])
                         if self.num_layers else np.empty((0, rows.size, rows.size), np.float32) for a in self.arrays)
        # read in ascending row order (the packed rows are then visited front to back: ~2x faster
        # than the rows' own order), then put rows and columns back in the order asked for
        order = np.argsort(rows, kind="stable")
        back = np.argsort(order)
        positions = packed_positions(rows[order], self.n)

        def gathered(name: str) -> np.ndarray:
            stack = aligned_empty((self.num_layers, rows.size, rows.size))
            ascending = np.empty((rows.size, rows.size), np.float32)
            with self._packed(name, 0, self.num_layers) as packed:
                for l in range(self.num_layers):
                    np.take(packed[l], positions, out=ascending)
                    np.take(ascending[back], back, axis=1, out=stack[l])
            return stack

        # one thread per file (numpy's take releases the GIL: ~2x on two cores)
        with ThreadPoolExecutor(max_workers=len(KINDS[self.kind]), thread_name_prefix="awm-gather") as pool:
            return tuple(pool.map(gathered, KINDS[self.kind]))


def _stored_matrices(resolved: ResolvedLayout, layer: int, kind: str) -> tuple[np.ndarray, ...]:
    """The weight matrices ``[rows, n]`` whose Grams make one layer's fingerprint of ``kind``, as stored."""
    if kind == "qk":
        return tuple(resolved.read_qk(layer))
    rows = [m for mlp in resolved.read_mlp(layer) for m in (mlp.gate, mlp.up) if m is not None]
    return (np.concatenate(rows).astype(np.float32, copy=False),)


def _gain(resolved: ResolvedLayout, layer: int, kind: str, norm_gains: str) -> np.ndarray | None:
    """The norm gain folded into layer ``layer``'s matrices of ``kind`` (``None``: nothing to fold)."""
    return resolved.gain(layer, "attention" if kind == "qk" else "mlp") if norm_gains == "fold" else None


def layer_matrices(resolved: ResolvedLayout, layer: int, kind: str, norm_gains: str) -> tuple[np.ndarray, ...]:
    """The weight matrices ``[rows, n]`` whose Grams make one layer's fingerprint of ``kind``
    (``W diag(g)``, the pre-norm gain folded in, when ``norm_gains`` is ``"fold"``)."""
    mats = _stored_matrices(resolved, layer, kind)
    gain = _gain(resolved, layer, kind, norm_gains)
    return mats if gain is None else tuple(fold_gain(w, gain) for w in mats)


class _Chunk(NamedTuple):
    """Layers ``[start, stop)`` as read: per file of the kind a zero-padded ``[chunk, rows, n]``
    stack of the stored matrices, and each layer's gain to fold (``None``: none)."""

    stacks: list[np.ndarray]
    gains: list[np.ndarray | None]


def _read_chunk(resolved: ResolvedLayout, start: int, stop: int, chunk: int, hasher, kind: str,
                norm_gains: str) -> _Chunk:
    """Reads layers ``[start, stop)`` (zero rows and zero layers add nothing to a Gram). The gains
    are folded into the Grams (:func:`_grams`), not into the matrices: the stored bf16 values then
    reach the CPU's bf16 matrix units exactly, and ``diag(g) W^T W diag(g)`` is ``(W diag(g))^T (W
    diag(g))``."""
    layers = [_stored_matrices(resolved, i, kind) for i in range(start, stop)]
    gains = [_gain(resolved, i, kind, norm_gains) for i in range(start, stop)]
    halves = []  # each matrix as bf16 when that loses nothing (weights stored in bf16), else None
    for i, mats, gain in zip(range(start, stop), layers, gains):
        for name, w in zip(("query", "key") if kind == "qk" else ("MLP input",), mats):
            if not (w.any() if gain is None else (w.any(axis=0) & (gain != 0)).any()):  # W diag(g) all zeros
                raise NumericalError(
                    f"{resolved.ckpt.root}: layer {i} {name} projection is all zeros; the checkpoint is damaged "
                    "or a placeholder: fetch the real weights"
                )
            w16 = host_blas.exact_bf16(w)
            halves.append(w16)
            if hasher is not None:  # the values, in the narrower of the two exact forms (sha256 releases
                # the GIL: hashing overlaps the Gram matmuls)
                hasher.update(b"f" if w16 is None else b"b")
                hasher.update(np.ascontiguousarray(w if w16 is None else w16).view(np.uint8).data)
        if hasher is not None and gain is not None:
            hasher.update(memoryview(np.ascontiguousarray(gain, np.float32)).cast("B"))
    # bf16 stacks for a bf16 GEMM (half the bytes, no float32 copy), else float32
    narrow = default_platform() == "cpu" and host_blas.bf16_gemm_available() and all(h is not None for h in halves)
    per_layer = len(layers[0])
    stacks = []
    for f in range(per_layer):
        rows = max(mats[f].shape[0] for mats in layers)
        stack = np.zeros((chunk, rows, resolved.hidden_size), host_blas.BF16 if narrow else np.float32)
        for j, mats in enumerate(layers):
            stack[j, : mats[f].shape[0]] = halves[j * per_layer + f] if narrow else mats[f]
        stacks.append(stack)
    return _Chunk(stacks, gains)


def fold_into_gram(gram: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """``diag(g) K diag(g)`` in place (float32, each entry ``K_ij g_i g_j``). Gains outside the
    ordinary float range are first scaled by a power of two (exact; CKA is scale free) so that
    ``g_i g_j`` cannot overflow."""
    g = gain.astype(np.float32)
    shift = int(range_shift(np.asarray(np.abs(g).max())))
    if shift:
        g = np.ldexp(g, shift).astype(np.float32)
    gram *= g[:, None]
    gram *= g[None, :]
    return gram


def _grams(stack: np.ndarray, count: int, gains: list[np.ndarray | None]) -> np.ndarray:
    """Grams of the first ``count`` layers of a zero-padded ``[c, d, n]`` stack, each layer's gain
    folded in (:func:`fold_into_gram`).

    On the CPU backend the host BLAS computes them (see ``gram_layers_host``); elsewhere the
    jitted kernel runs on the whole padded chunk, so every chunk has one compiled shape.
    """
    if default_platform() == "cpu":
        grams = gram_layers_host(stack[:count])
    else:
        grams = np.array(jax.block_until_ready(gram_layers(jnp.asarray(stack))))[:count]
    for gram, gain in zip(grams, gains):
        if gain is not None:
            fold_into_gram(gram, gain)
    return grams


def _store(files: list, digests: list[BlockDigest], grams: list[np.ndarray]) -> None:
    """Appends one chunk of Grams to each file as packed upper triangles, and to its block
    checksums (when cached)."""
    for i, (f, g) in enumerate(zip(files, grams)):
        data = memoryview(pack_upper(g)).cast("B")
        f.write(data)
        if digests:
            digests[i].update(data)


def _store_records(files: list, digests: list[BlockDigest], records: list[list[np.ndarray]]) -> None:
    """Appends every layer's parts records to each file, and to its block checksums (when cached)."""
    for i, (f, recs) in enumerate(zip(files, records)):
        data = memoryview(np.stack(recs)).cast("B")
        f.write(data)
        if digests:
            digests[i].update(data)


def model_grams(
    resolved: ResolvedLayout, cache: FingerprintCache | None = None, timings: dict | None = None, kind: str = "qk",
    norm_gains: str = DEFAULT_NORM_GAINS,
) -> GramSet:
    """The per-layer Grams of a model (``kind`` ``"qk"``: Q and K; ``"mlp"``: MLP inputs),
    from the cache when a verified entry is there, else computed (and published to the cache).

    A damaged or stale cache entry is dropped with one warning line on stderr and computed again;
    a cache folder that cannot be written is warned about and the Grams are computed without it.

    Args:
      resolved: the model's bound layout.
      cache: the fingerprint cache, or ``None`` to compute without caching.
      timings: optional dict; ``read_s`` and ``gram_s`` are added to it, ``cache_hit`` set.
      kind: which fingerprint (a key of ``KINDS``).
      norm_gains: ``"fold"`` (the canonical form: pre-norm gains folded into the matrices that
        read the norm) or ``"ignore"`` (the stored matrices, the paper's computation); part of the
        content key and of the index, so one mode's Grams are never served for the other.

    Returns:
      The model's Grams.

    Raises:
      CacheError: the Grams could not be written (a full disk).
    """
    timings = timings if timings is not None else {}
    check_norm_gains(norm_gains)
    label = f"{resolved.ckpt.root.name}{' (MLP)' if kind == 'mlp' else ''}"
    fkey = cache.identify(resolved) if cache is not None else None
    if cache is not None:
        with stage(f"{label}: looking up the cached fingerprint"):
            hit = cache.lookup(resolved, kind, fkey, norm_gains)
        if hit is not None:
            timings["cache_hit"] = True
            return hit
    timings["cache_hit"] = False
    names = KINDS[kind]
    n, layers = resolved.hidden_size, resolved.num_layers
    # MLP inputs are several times the size of Q/K: one layer at a time.
    chunk = chunk_layers_for(n, max(resolved.q_dim, resolved.k_dim), layers) if kind == "qk" else 1
    tmp_ctx = None
    folder = cache.new_folder() if cache is not None else None  # None (and a warning): not writable
    if folder is None:
        cache = None
        if len(names) * layers * n * n * 4 > IN_MEMORY_BYTES:
            tmp_ctx = tempfile.TemporaryDirectory(prefix="awm_jax-")
            folder = Path(tmp_ctx.name)
    hasher = hashlib.sha256() if cache is not None else None
    if hasher is not None:
        hasher.update(f"{ALGORITHM_VERSION}|{kind}|{norm_gains}|{resolved.name}|{n}|{layers}".encode())
    arrays = [aligned_empty((layers, n, n)) for _ in names] if folder is None else []
    digests = [BlockDigest() for _ in names] if cache is not None else []
    read_s = gram_s = 0.0
    records: list[list[np.ndarray]] = [[] for _ in names]
    try:
        files = [open(folder / name, "wb") for name in names] if folder is not None else []
        try:
            bounds = [(start, min(start + chunk, layers)) for start in range(0, layers, chunk)]
            # One reader thread fetches (and hashes) chunk i + 1 and one writer thread stores chunk
            # i - 1 while the Grams of chunk i are computed (file I/O and hashing release the GIL).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-read") as reader, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-write") as writer, \
                    stage(f"{label}: fingerprint", total=layers) as progress:
                t = time.perf_counter()
                pending = reader.submit(_read_chunk, resolved, *bounds[0], chunk, hasher, kind, norm_gains)
                written = None
                for i, (start, stop) in enumerate(bounds):
                    read = pending.result()
                    if i + 1 < len(bounds):
                        pending = reader.submit(_read_chunk, resolved, *bounds[i + 1], chunk, hasher, kind,
                                                norm_gains)
                    t1 = time.perf_counter()
                    read_s += t1 - t
                    grams = [_grams(stack, stop - start, read.gains) for stack in read.stacks]
                    t = time.perf_counter()
                    gram_s += t - t1
                    progress.advance(stop - start)
                    if folder is None:  # the upper triangle, mirrored: what a packed file gives back
                        for j, g in enumerate(grams):
                            arrays[j][start:stop] = g
                            mirror_upper(arrays[j][start:stop])
                        continue
                    records = [records[j] + layer_parts(g) for j, g in enumerate(grams)]
                    if written is not None:
                        written.result()  # at most one chunk waits to be written: bounded memory
                    written = writer.submit(_store, files, digests, grams)
                if written is not None:
                    written.result()
                _store_records(files, digests, records)  # after the layers: each layer's HSIC parts
            # No fsync: the entry is published by os.replace only after every byte is written, so a
            # killed process never leaves a partial entry; durability across a power loss is left to
            # the kernel (fsync-ing gigabytes of Grams would cost more than computing them).
            for f in files:
                f.flush()
        finally:
            for f in files:
                f.close()
        timings["read_s"] = timings.get("read_s", 0.0) + read_s
        timings["gram_s"] = timings.get("gram_s", 0.0) + gram_s
        if cache is not None:
            return cache.publish(folder, resolved, hasher.hexdigest(), kind,
                                 {name: d.hexdigests() for name, d in zip(names, digests)}, fkey, norm_gains)
    except OSError as e:
        if folder is not None and cache is not None:
            cache.discard(folder)
        if cache is None:
            raise CacheError(f"{folder}: cannot write the temporary fingerprint ({e.strerror}); free disk space or "
                             "set TMPDIR to another folder") from None
        raise CacheError(
            f"{folder}: cannot write the fingerprint ({e.strerror}); free disk space, set AWM_JAX_CACHE to another "
            "folder, or pass --no-cache"
        ) from None
    except BaseException:
        if folder is not None and cache is not None:
            cache.discard(folder)
        raise
    if folder is None:
        return GramSet(layers, n, kind, arrays=tuple(arrays), norm_gains=norm_gains)
    return GramSet(layers, n, kind, folder=folder, owner=tmp_ctx, norm_gains=norm_gains)
