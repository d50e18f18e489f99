"""Per-model fingerprints: the Q and K Gram matrices of every layer, computed once and cached.

A model's Grams ``K_l = W_l^T W_l`` (``[n, n]``, float32) depend on that model alone; every
comparison against it only permutes, sign-flips and compares them. They are computed by
streaming a chunk of layers at a time from the checkpoint (bounded memory whatever the depth),
and kept either in memory (small models, ``--no-cache``) or in the fingerprint cache:

``$AWM_JAX_CACHE`` (else ``$XDG_CACHE_HOME/awm_jax``, else ``~/.cache/awm_jax``)::

    fingerprints/<content key>/meta.json, gram_q.f32, gram_k.f32   # [L, n, n] raw float32
    fingerprints/<content key>/meta.json, gram_mlp.f32              # MLP inputs (optional kind)
    index/<file key>-<kind>-<norm gains>.json                       # -> content key

The content key hashes the algorithm version, the norm-gain mode, the layout and the bytes of
every Q/K matrix used (after folding the gains, in the ``fold`` mode). Both keys and
``meta.json`` carry the norm-gain mode (``awm_jax.layouts._norms``): the Grams of one mode are
never served for the other. The file key hashes the paths, sizes, modification times and inode numbers of the
checkpoint's files plus its config, so a second comparison finds the fingerprint without
reading any Q/K weight again; a changed file changes the file key and forces a recompute.
Every write goes to a temporary name first and is published with ``os.replace``, so a process
killed at any point leaves either no entry or a complete one. The Gram files are not fsync-ed
(gigabytes for a 7B model; the disk would dominate the cold time): after a power loss an entry
may need deleting, which ``lookup`` cannot always tell (the index file is fsync-ed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from awm_jax.io.atomic import atomic_write
from awm_jax._version import ALGORITHM_VERSION
from awm_jax.errors import CacheError, NumericalError
from awm_jax.numerics.kernels import default_platform, gram_layers, gram_layers_host
from awm_jax.layouts import DEFAULT_NORM_GAINS, ResolvedLayout, check_norm_gains

__all__ = ["GramSet", "FingerprintCache", "KINDS", "aligned_empty", "default_cache_dir", "model_grams", "chunk_layers_for"]

#: Grams larger than this (both projections, all layers) are kept on disk, not in memory.
IN_MEMORY_BYTES = 512 * 1024 * 1024
#: Rough device-memory budget of one chunk of layers (weights, Grams, temporaries).
CHUNK_BYTES = 768 * 1024 * 1024


#: Fingerprint kinds and their files: the attention Q/K Grams (the method), and the MLP input
#: Grams (``[gate; up]`` rows, all experts of a mixture stacked) as extra evidence.
KINDS: dict[str, tuple[str, ...]] = {"qk": ("gram_q.f32", "gram_k.f32"), "mlp": ("gram_mlp.f32",)}


#: Buffers handed to JAX are aligned so the CPU backend can use them without a copy.
BUFFER_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised array whose data starts on a ``BUFFER_ALIGNMENT``-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + BUFFER_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % BUFFER_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def default_cache_dir() -> Path:
    """``$AWM_JAX_CACHE``, else ``$XDG_CACHE_HOME/awm_jax``, else ``~/.cache/awm_jax``."""
    if os.environ.get("AWM_JAX_CACHE"):
        return Path(os.environ["AWM_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "awm_jax"


def chunk_layers_for(n: int, d: int, num_layers: int) -> int:
    """Layers per chunk so a chunk's weights, Grams and temporaries fit ``CHUNK_BYTES``."""
    per_layer = 4 * (3 * n * n + 2 * d * n) * 2
    return int(max(1, min(num_layers, CHUNK_BYTES // max(per_layer, 1))))


@dataclasses.dataclass(frozen=True)
class GramSet:
    """Per-layer Grams of one model (one array per file of its kind), in memory or on disk.

    Attributes:
      num_layers: ``L``.
      n: hidden size.
      kind: ``"qk"`` (arrays: Q, K) or ``"mlp"`` (arrays: MLP inputs).
      folder: folder with the kind's raw float32 files (``[L, n, n]`` each), or ``None``.
      arrays: ``[L, n, n]`` in-memory Grams, one per file of the kind (when ``folder`` is ``None``).
      key: content key (empty when not computed under the cache).
      owner: keeps a temporary folder alive as long as the set (uncached large models).
      norm_gains: how the normalisation gains entered the Grams: ``"fold"`` or ``"ignore"``.
    """

    num_layers: int
    n: int
    kind: str = "qk"
    folder: Path | None = None
    arrays: tuple[np.ndarray, ...] = ()
    key: str = ""
    owner: object = dataclasses.field(default=None, repr=False, compare=False)
    norm_gains: str = DEFAULT_NORM_GAINS

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
        return tuple(self._read(i, [(start, stop)]) for i in range(len(KINDS[self.kind])))

    def _read(self, index: int, spans: list[tuple[int, int]], pad_to: int = 0) -> np.ndarray:
        """Layers of the given ``[start, stop)`` spans of array ``index`` into one aligned buffer,
        zero-padded to ``pad_to`` layers."""
        count = sum(stop - start for start, stop in spans)
        out = aligned_empty((max(count, pad_to), self.n, self.n))
        out[count:] = 0
        self.read_into(index, spans, out)
        return out

    def read_into(self, index: int, spans: list[tuple[int, int]], out: np.ndarray) -> None:
        """Copies the layers of the given ``[start, stop)`` spans of array ``index`` (for ``qk``:
        0 the Q Grams, 1 the K Grams), one span after another, into the leading layers of ``out``
        (a C-contiguous float32 ``[>= layers, n, n]`` buffer)."""
        if self.folder is None:
            pos = 0
            for start, stop in spans:
                out[pos : pos + stop - start] = self.arrays[index][start:stop]
                pos += stop - start
            return
        layer_bytes = self.n * self.n * 4
        view = memoryview(out.reshape(-1).view(np.uint8))
        path = self.folder / KINDS[self.kind][index]
        try:
            with open(path, "rb", buffering=0) as f:
                pos = 0
                for start, stop in spans:
                    f.seek(start * layer_bytes)
                    want = (stop - start) * layer_bytes
                    got = f.readinto(view[pos : pos + want])
                    if got != want:
                        raise CacheError(f"{path}: cached fingerprint is truncated; delete {self.folder} and rerun "
                                         "(the fingerprint is computed again)")
                    pos += want
        except OSError as e:
            raise CacheError(f"{path}: cannot read the cached fingerprint ({e}); delete {self.folder} and rerun "
                             "(the fingerprint is computed again)") from None

    def padded(self, layers: list[int], size: int) -> tuple[np.ndarray, ...]:
        """The Grams of ``layers`` (any order), zero-padded to ``size`` layers, one array per file
        of the kind: read-only maps of the cache files when the layers are one whole span, else
        copies in aligned buffers; either way what the jitted kernels take without a copy on the CPU."""
        if self.folder is None:
            out = []
            for a in self.arrays:
                buf = aligned_empty((size, self.n, self.n))
                buf[: len(layers)] = a[layers]
                buf[len(layers):] = 0
                out.append(buf)
            return tuple(out)
        spans: list[tuple[int, int]] = []
        for i in layers:  # consecutive layers become one read
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
        if len(spans) == 1 and len(layers) == size:
            return tuple(self._mapped(name, *spans[0]) for name in KINDS[self.kind])
        return tuple(self._read(i, spans, size) for i in range(len(KINDS[self.kind])))

    def _mapped(self, name: str, start: int, stop: int) -> np.ndarray:
        """Layers ``[start, stop)`` of one file, memory-mapped read-only: no copy is made (on the
        CPU, ``device_put`` takes the mapped pages as they are; cache files are never modified
        once published). The kernel is asked to read the pages ahead (``MADV_WILLNEED``), so a
        prefetching caller gets the disk reads started early."""
        path = self.folder / name
        layer_bytes = self.n * self.n * 4
        offset = start * layer_bytes
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), offset - base + (stop - start) * layer_bytes, access=mmap.ACCESS_READ,
                                   offset=base)
        except (OSError, ValueError) as e:
            raise CacheError(f"{path}: cannot read the cached fingerprint ({e}); pass --no-cache or clear the cache") from None
        if hasattr(mmap, "MADV_WILLNEED"):
            mapped.madvise(mmap.MADV_WILLNEED)
        return np.frombuffer(mapped, np.float32, (stop - start) * self.n * self.n, offset - base).reshape(
            stop - start, self.n, self.n)

    def take(self, layers: list[int]) -> tuple[np.ndarray, ...]:
        """The Grams of the given layers (any order), one ``[len(layers), n, n]`` array per file."""
        return self.padded(layers, len(layers))


def _file_key(resolved: ResolvedLayout) -> str:
    ckpt = resolved.ckpt
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{ALGORITHM_VERSION}|{resolved.name}|{resolved.prefix}".encode())
    h.update(json.dumps(ckpt.config, sort_keys=True).encode())
    for f in ckpt.files:
        st = f.stat()
        h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode())
    return h.hexdigest()


class FingerprintCache:
    """The on-disk fingerprint cache (see the module docstring for its layout)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def _index(self, resolved: ResolvedLayout, kind: str, norm_gains: str) -> Path:
        return self.root / "index" / f"{_file_key(resolved)}-{kind}-{check_norm_gains(norm_gains)}.json"

    def lookup(self, resolved: ResolvedLayout, kind: str = "qk", norm_gains: str = DEFAULT_NORM_GAINS) -> GramSet | None:
        """The cached Grams of this checkpoint in the given norm-gain mode, or ``None`` (also when
        an entry is damaged, or was computed in the other mode)."""
        index = self._index(resolved, kind, norm_gains)
        try:
            key = json.loads(index.read_text())["content_key"]
            folder = self.root / "fingerprints" / key
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        n, layers = resolved.hidden_size, resolved.num_layers
        if (meta.get("n") != n or meta.get("num_layers") != layers or meta.get("algorithm") != ALGORITHM_VERSION
                or meta.get("kind", "qk") != kind or meta.get("norm_gains", "ignore") != norm_gains):
            return None
        size = layers * n * n * 4
        for name in KINDS[kind]:
            try:
                if (folder / name).stat().st_size != size:
                    return None
            except OSError:
                return None
        return GramSet(layers, n, kind, folder=folder, key=key, norm_gains=norm_gains)

    def new_folder(self) -> Path:
        """A fresh temporary folder inside the cache to write a fingerprint into."""
        try:
            (self.root / "fingerprints").mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(dir=self.root / "fingerprints", prefix=".tmp-"))
        except OSError as e:
            raise CacheError(f"{self.root}: cannot create the fingerprint cache ({e.strerror}); set AWM_JAX_CACHE "
                             "to a writable folder or pass --no-cache") from None

    def publish(self, tmp: Path, resolved: ResolvedLayout, key: str, kind: str = "qk",
                norm_gains: str = DEFAULT_NORM_GAINS) -> GramSet:
        """Moves a completed fingerprint into place and indexes it by the checkpoint's file key."""
        meta = {"algorithm": ALGORITHM_VERSION, "n": resolved.hidden_size, "num_layers": resolved.num_layers,
                "layout": resolved.name, "kind": kind, "norm_gains": check_norm_gains(norm_gains),
                "source": str(resolved.ckpt.root)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        final = self.root / "fingerprints" / key
        try:
            os.replace(tmp, final)
        except OSError:  # an identical fingerprint is already there (same weights elsewhere)
            shutil.rmtree(tmp, ignore_errors=True)
        index = self._index(resolved, kind, norm_gains)
        index.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(index, json.dumps({"content_key": key}).encode())
        return GramSet(resolved.num_layers, resolved.hidden_size, kind, folder=final, key=key, norm_gains=norm_gains)


def _layer_matrices(resolved: ResolvedLayout, layer: int, kind: str, norm_gains: str) -> tuple[np.ndarray, ...]:
    """The weight matrices ``[rows, n]`` whose Grams make one layer's fingerprint of ``kind``
    (with the pre-norm gains folded in when ``norm_gains`` is ``"fold"``)."""
    if kind == "qk":
        mats = resolved.read_qk(layer)
    else:
        rows = [m for mlp in resolved.read_mlp(layer) for m in (mlp.gate, mlp.up) if m is not None]
        mats = (np.concatenate(rows).astype(np.float32, copy=False),)
    if norm_gains == "fold":
        return resolved.fold_gains(layer, "attention" if kind == "qk" else "mlp", *mats)
    return mats


def _read_chunk(resolved: ResolvedLayout, start: int, stop: int, chunk: int, hasher, kind: str,
                norm_gains: str) -> list[np.ndarray]:
    """Reads layers ``[start, stop)``: per file of ``kind`` a ``[chunk, rows, n]`` stack, zero-padded
    (zero rows and zero layers add nothing to a Gram)."""
    layers = [_layer_matrices(resolved, i, kind, norm_gains) for i in range(start, stop)]
    for i, mats in zip(range(start, stop), layers):
        for name, w in zip(("query", "key") if kind == "qk" else ("MLP input",), mats):
            if not w.any():
                raise NumericalError(
                    f"{resolved.ckpt.root}: layer {i} {name} projection is all zeros; the checkpoint is damaged "
                    "or a placeholder: fetch the real weights"
                )
            if hasher is not None:  # sha256 releases the GIL: hashing overlaps the Gram matmuls
                hasher.update(memoryview(np.ascontiguousarray(w)).cast("B"))
    stacks = []
    for f in range(len(layers[0])):
        rows = max(mats[f].shape[0] for mats in layers)
        stack = np.zeros((chunk, rows, resolved.hidden_size), np.float32)
        for j, mats in enumerate(layers):
            stack[j, : mats[f].shape[0]] = mats[f]
        stacks.append(stack)
    return stacks


def _grams(stack: np.ndarray, count: int) -> np.ndarray:
    """Grams of the first ``count`` layers of a zero-padded ``[c, d, n]`` stack.

    On the CPU backend the host BLAS computes them (see ``gram_layers_host``); elsewhere the
    jitted kernel runs on the whole padded chunk, so every chunk has one compiled shape.
    """
    if default_platform() == "cpu":
        return gram_layers_host(stack[:count])
    return np.asarray(jax.block_until_ready(gram_layers(jnp.asarray(stack))))[:count]


def model_grams(
    resolved: ResolvedLayout, cache: FingerprintCache | None = None, timings: dict | None = None, kind: str = "qk",
    norm_gains: str = DEFAULT_NORM_GAINS,
) -> GramSet:
    """The per-layer Grams of a model (``kind`` ``"qk"``: Q and K; ``"mlp"``: MLP inputs),
    from the cache when present, else computed.

    Args:
      resolved: the model's bound layout.
      cache: the fingerprint cache, or ``None`` to compute without caching.
      timings: optional dict; ``read_s`` and ``gram_s`` are added to it, ``cache_hit`` set.
      kind: which fingerprint (a key of ``KINDS``).
      norm_gains: ``"fold"`` (the canonical form: pre-norm gains folded into the matrices that
        read the norms) or ``"ignore"`` (the stored matrices, the paper's computation).

    Returns:
      The model's Grams.
    """
    timings = timings if timings is not None else {}
    check_norm_gains(norm_gains)
    if cache is not None:
        hit = cache.lookup(resolved, kind, norm_gains)
        if hit is not None:
            timings["cache_hit"] = True
            return hit
    timings["cache_hit"] = False
    names = KINDS[kind]
    n, layers = resolved.hidden_size, resolved.num_layers
    # MLP inputs are several times the size of Q/K: one layer at a time.
    chunk = chunk_layers_for(n, max(resolved.q_dim, resolved.k_dim), layers) if kind == "qk" else 1
    tmp_ctx = None
    if cache is not None:
        folder = cache.new_folder()
    elif len(names) * layers * n * n * 4 > IN_MEMORY_BYTES:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="awm_jax-")
        folder = Path(tmp_ctx.name)
    else:
        folder = None
    hasher = hashlib.sha256() if cache is not None else None
    if hasher is not None:
        hasher.update(f"{ALGORITHM_VERSION}|{kind}|{norm_gains}|{resolved.name}|{n}|{layers}".encode())
    arrays = [aligned_empty((layers, n, n)) for _ in names] if folder is None else []
    read_s = gram_s = 0.0
    try:
        files = [open(folder / name, "wb") for name in names] if folder is not None else []
        try:
            bounds = [(start, min(start + chunk, layers)) for start in range(0, layers, chunk)]
            # One reader thread fetches (and hashes) chunk i + 1 and one writer thread stores chunk
            # i - 1 while the Grams of chunk i are computed (file I/O and hashing release the GIL).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-read") as reader, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-write") as writer:
                t = time.perf_counter()
                pending = reader.submit(_read_chunk, resolved, *bounds[0], chunk, hasher, kind, norm_gains)
                written = None
                for i, (start, stop) in enumerate(bounds):
                    stacks = pending.result()
                    if i + 1 < len(bounds):
                        pending = reader.submit(_read_chunk, resolved, *bounds[i + 1], chunk, hasher, kind,
                                                norm_gains)
                    t1 = time.perf_counter()
                    read_s += t1 - t
                    grams = [_grams(stack, stop - start) for stack in stacks]
                    t = time.perf_counter()
                    gram_s += t - t1
                    if folder is None:
                        for j, g in enumerate(grams):
                            arrays[j][start:stop] = g
                        continue
                    if written is not None:
                        written.result()  # at most one chunk waits to be written: bounded memory
                    written = writer.submit(lambda gs: [f.write(memoryview(g)) for f, g in zip(files, gs)], grams)
                if written is not None:
                    written.result()
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
            return cache.publish(folder, resolved, hasher.hexdigest(), kind, norm_gains)
    except OSError as e:
        if folder is not None and cache is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise CacheError(
            f"{folder}: cannot write the fingerprint ({e.strerror}); free disk space, set AWM_JAX_CACHE to another "
            "folder, or pass --no-cache"
        ) from None
    except BaseException:
        if folder is not None and cache is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if folder is None:
        return GramSet(layers, n, kind, arrays=tuple(arrays), norm_gains=norm_gains)
    return GramSet(layers, n, kind, folder=folder, owner=tmp_ctx, norm_gains=norm_gains)
