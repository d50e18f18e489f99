"""Packed storage of symmetric Grams: each layer's upper triangle, row by row.

A Gram ``K = W^T W`` (``[n, n]``) is symmetric, so a fingerprint on disk keeps only
``K[i, i:]`` for every row ``i``, one row after another: ``n (n + 1) / 2`` float32 values per
layer, half of the full matrix (``n (n + 1) / 2 = n^2 / 2 + n / 2``). Unpacking copies the rows
into place and mirrors the upper triangle into the lower one tile by tile (``TILE`` x ``TILE``
transposes, which stay in the CPU's caches). Computed Grams are made exactly symmetric
(:func:`mirror_upper`) before use, so a Gram read back from disk equals the one kept in memory
bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["TILE", "mirror_upper", "pack_upper", "packed_len", "packed_positions", "unpack_upper"]

#: Side of the square tiles the lower triangle is mirrored in (fastest of 32-256 on the
#: development machine at n = 4096).
TILE = 64


def packed_len(n: int) -> int:
    """Values of one packed layer of hidden size ``n``: ``n (n + 1) / 2``."""
    return n * (n + 1) // 2


@functools.lru_cache(maxsize=8)
def _row_offsets(n: int) -> np.ndarray:
    """``[n + 1]`` int64: where row ``i``'s ``K[i, i:]`` starts in a packed layer (and the end)."""
    return np.concatenate(([0], np.cumsum(np.arange(n, 0, -1, dtype=np.int64))))


@functools.lru_cache(maxsize=8)
def _strict_lower(size: int) -> np.ndarray:
    """``[size, size]`` bool: the strict lower triangle."""
    return np.tril(np.ones((size, size), bool), -1)


def pack_upper(grams: np.ndarray) -> np.ndarray:
    """The upper triangles of a stack of Grams.

    Args:
      grams: ``[c, n, n]`` float32 (only the upper triangle, diagonal included, is read).

    Returns:
      ``[c, n (n + 1) / 2]`` float32: per layer, ``K[0, 0:]``, ``K[1, 1:]``, ... concatenated.
    """
    c, n, _ = grams.shape
    out = np.empty((c, packed_len(n)), np.float32)
    off = _row_offsets(n)
    for i in range(n):
        out[:, off[i] : off[i + 1]] = grams[:, i, i:]
    return out


def mirror_upper(grams: np.ndarray) -> None:
    """Makes a stack of matrices symmetric in place: the lower triangle becomes the transpose of
    the upper one (the upper triangle and the diagonal are kept).

    Args:
      grams: ``[c, n, n]`` writable float32.
    """
    _, n, _ = grams.shape
    for b0 in range(0, n, TILE):
        b1 = min(b0 + TILE, n)
        diagonal = grams[:, b0:b1, b0:b1]
        np.copyto(diagonal, diagonal.transpose(0, 2, 1).copy(), where=_strict_lower(b1 - b0))
        for c0 in range(b1, n, TILE):
            c1 = min(c0 + TILE, n)
            grams[:, c0:c1, b0:b1] = grams[:, b0:b1, c0:c1].transpose(0, 2, 1)


def unpack_upper(packed: np.ndarray, out: np.ndarray) -> None:
    """Full symmetric Grams from packed upper triangles.

    Args:
      packed: ``[c, n (n + 1) / 2]`` float32 (a read-only map is fine).
      out: ``[c, n, n]`` writable float32, filled.
    """
    _, n, _ = out.shape
    off = _row_offsets(n)
    for i in range(n):
        out[:, i, i:] = packed[:, off[i] : off[i + 1]]
    mirror_upper(out)


def packed_positions(rows: np.ndarray, n: int) -> np.ndarray:
    """Where ``K[rows][:, rows]`` lies in a packed layer.

    Args:
      rows: ``[m]`` indices in ``[0, n)``.
      n: hidden size.

    Returns:
      ``[m, m]`` int64 positions: ``np.take(packed_layer, positions)`` is ``K[rows][:, rows]``.
    """
    r = np.asarray(rows, np.int64)
    low, high = np.minimum(r[:, None], r[None, :]), np.maximum(r[:, None], r[None, :])
    return _row_offsets(n)[low] + (high - low)
