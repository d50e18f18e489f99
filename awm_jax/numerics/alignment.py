"""Alignment of the residual dimensions of two models (docs/method.md steps 2-5, and beyond).

``E_b^T E_t`` over the shared-token rows is accumulated block by block. The paper's alignment
(``assignment``) turns it into column cosines and solves the linear assignment maximising the
total ``|cos|`` on the host with ``scipy.optimize.linear_sum_assignment``: every target dimension
``j`` gets a distinct base dimension ``p(j)`` and a sign ``s_j``. A dense rotation of the
residual stream (function-preserving once the normalisation gains are folded into the
neighbouring matrices) defeats any permutation; ``orthogonal`` fits an orthogonal map instead
(Procrustes, an SVD of the same ``E_b^T E_t``), and ``auto`` picks between the two
(:mod:`awm_jax.numerics.auto_alignment`).

The sums are scale invariant by construction: each embedding is multiplied by a power of two
(exact) chosen from the largest magnitude seen so far, so an embedding multiplied by ``2^70`` or
``2^-70`` gives the same cosines as the stored one (``kernels.range_shift``).

Minimum evidence (:func:`check_alignment_evidence`): an alignment is only as good as what the
shared rows say about the columns. Below these, the pair is refused (``NumericalError``, exit 6)
rather than scored:

- the narrower model has at least ``MIN_SAMPLES`` (4) hidden dimensions: the unbiased HSIC
  estimator divides by ``n - 3``;
- the models share at least a quarter as many tokens (rows) as the base has hidden dimensions
  (``MIN_SHARED_DIVISOR``), and at least ``MIN_RANK``: over a handful of rows every column cosine
  is large and any matching fits (one shared token makes every cosine +-1), while a derived
  model's columns stay distinct vectors, matched by cosines near 1, even over fewer rows than
  dimensions (a 105-token character vocabulary at hidden size 128);
- no embedding column is zero over the shared rows, and ``RANK_COLUMNS`` evenly spaced columns
  of each embedding (all of them for ``n <= RANK_COLUMNS``) span at least ``MIN_RANK`` (4)
  directions over up to ``RANK_ROWS`` evenly spaced shared rows (singular values of the
  column-normalised sample above ``RANK_RTOL`` times the largest). An embedding whose rows are
  all equal has rank 1: every column is the same direction and any matching is as good as any
  other. Full rank is not required: an embedding factored through a narrower matrix (OPT-350m's
  ``project_in``, half the hidden size) has distinct column directions, and on random
  embeddings of rank ``r`` with a fine-tune's noise the matching is recovered exactly from
  ``r = 3`` or ``4`` on (hidden sizes 32 to 1024), and fails at ``r <= 2``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from awm_jax.errors import NumericalError
from awm_jax.numerics import host_blas
from awm_jax.numerics.kernels import (
    MIN_SAMPLES,
    column_cosine_accumulate,
    default_platform,
    range_shift,
)

__all__ = [
    "DegenerateAlignment",
    "ALIGNMENT_MODES",
    "Alignment",
    "EmbeddingCross",
    "MIN_RANK",
    "RANK_COLUMNS",
    "RANK_ROWS",
    "RANK_RTOL",
    "ROW_BLOCK",
    "Rotation",
    "SampledRank",
    "assign_dimensions",
    "block_rows",
    "check_alignment_evidence",
    "column_cosine",
    "embedding_cross",
    "orthogonal_procrustes",
    "permutation_fit",
    "sampled_rank",
]

#: ``assignment``: the paper's signed permutation; ``orthogonal``: a Procrustes rotation, which also
#: undoes a dense rotation of the residual stream; ``auto``: the permutation unless the rotation
#: makes the layers' Grams agree far better. Defined in :mod:`awm_jax.options`.
from awm_jax.options import ALIGNMENT_MODES  # noqa: E402

#: Shared rows per accumulation block (padded blocks keep one compiled shape per model pair).
ROW_BLOCK = 8192


class DegenerateAlignment(NumericalError):
    """The shared rows cannot identify the alignment (:func:`check_alignment_evidence`): a property
    of the pair, not damage to either model (a catalogue scan sets such an entry aside)."""


@dataclasses.dataclass(frozen=True)
class Alignment:
    """A signed matching of target dimensions to base dimensions.

    Attributes:
      perm: ``[n_t]`` base dimension matched to each target dimension.
      signs: ``[n_t]`` float32 +1/-1 (a zero cosine gives +1).
      matched_cos: ``[n_t]`` the cosine ``S[p(j), j]`` of each matched pair.
      base_dims: ``n_b``.
    """

    perm: np.ndarray
    signs: np.ndarray
    matched_cos: np.ndarray
    base_dims: int

    @property
    def target_dims(self) -> int:
        return int(self.perm.size)

    def diagnostics(self) -> dict:
        """Summary numbers for the report."""
        abs_cos = np.abs(self.matched_cos)
        return {
            "base_dims": self.base_dims,
            "matched_dims": self.target_dims,
            "sign_flips": int((self.signs < 0).sum()),
            "identity_matches": int((self.perm == np.arange(self.target_dims)).sum()),
            "mean_abs_cos": float(abs_cos.mean()),
            "min_abs_cos": float(abs_cos.min()),
        }


def block_rows(rows: int) -> int:
    """Shared rows per accumulation block for ``rows`` shared rows: the next power of two,
    at most ``ROW_BLOCK``."""
    return min(ROW_BLOCK, 1 << max(rows - 1, 1).bit_length())


#: Embedding columns whose linear independence is checked (evenly spaced; all when fewer).
RANK_COLUMNS = 64
#: Shared rows they are checked over (evenly spaced over the shared rows; all when fewer).
RANK_ROWS = 4096
#: A singular value of the column-normalised sample counts when above this times the largest.
RANK_RTOL = 1e-4
#: Fewest directions the sampled columns must span (fewer: the columns cannot be told apart).
MIN_RANK = 4
#: A pair must share at least ``n_b / MIN_SHARED_DIVISOR`` tokens (and ``MIN_RANK``): fewer rows
#: than dimensions still tell a derived model's columns apart (each is a distinct vector over the
#: shared rows, matched by a cosine near 1), but over a handful of rows every cosine is large and
#: any matching fits (one shared token makes every cosine +-1). Real small models share fewer
#: tokens than dimensions (a 105-token character vocabulary at hidden size 128) and are scored.
MIN_SHARED_DIVISOR = 4


@dataclasses.dataclass(frozen=True)
class SampledRank:
    """How many independent directions a sample of an embedding's columns spans over the shared rows.

    Attributes:
      columns: columns sampled (``min(n, RANK_COLUMNS)``).
      rows: shared rows sampled (``min(T, RANK_ROWS)``).
      rank: numerical rank of the column-normalised ``[rows, columns]`` sample; ``columns`` when
        the columns are independent.
    """

    columns: int
    rows: int
    rank: int


def sampled_rank(emb: np.ndarray, ids: np.ndarray) -> SampledRank | None:
    """The :class:`SampledRank` of an embedding over its shared rows (float64, from a small sample).

    Args:
      emb: ``[V, n]`` embedding, any float dtype (may be memory-mapped: only the sample is read).
      ids: ``[T]`` its shared rows.

    Returns:
      The sampled rank, or ``None`` when the sample is empty or holds NaN/Inf (reported by the
      caller's finiteness check instead).
    """
    n = emb.shape[1]
    if n == 0 or ids.size == 0:
        return None
    cols = np.unique(np.linspace(0, n - 1, min(n, RANK_COLUMNS)).round().astype(np.int64))
    rows = np.unique(ids[np.linspace(0, ids.size - 1, min(ids.size, RANK_ROWS)).round().astype(np.int64)])
    x = np.asarray(emb[np.ix_(rows, cols)], np.float64)
    if not np.isfinite(x).all():
        return None
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    x = x / np.where(norms > 0, norms, 1.0)  # a zero column stays zero: a missing direction
    # Squared singular values as the eigenvalues of the [columns, columns] Gram: a float64
    # eigensolve of at most 64 x 64 (LAPACK's SVD of the tall sample costs 100x more here).
    power = np.linalg.eigvalsh(x.T @ x)
    top = power[-1]
    rank = int((power > top * RANK_RTOL**2).sum()) if top > 0 else 0
    return SampledRank(columns=int(cols.size), rows=int(rows.size), rank=rank)


@dataclasses.dataclass(frozen=True)
class EmbeddingCross:
    """Sums over the shared rows from which both alignments are derived.

    The sums are of the embeddings each multiplied by a power of two (see the module
    docstring): cosines, fits and rotations derived from them are exactly those of the stored
    embeddings.

    Attributes:
      cross: ``[n_b, n_t]`` float64 ``E_b^T E_t``.
      sq_base: ``[n_b]`` squared column norms of ``E_b``.
      sq_target: ``[n_t]`` squared column norms of ``E_t``.
      rows: shared rows summed over (``None`` when not recorded).
      rank_base: the base embedding's :class:`SampledRank` (``None`` when not measured).
      rank_target: the target's.
    """

    cross: np.ndarray
    sq_base: np.ndarray
    sq_target: np.ndarray
    rows: int | None = None
    rank_base: SampledRank | None = None
    rank_target: SampledRank | None = None

    @classmethod
    def of(cls, cross, sq_base, sq_target, **evidence) -> "EmbeddingCross":
        """The sums as float64 host arrays, from any array type (float32 accumulators);
        ``evidence``: ``rows``, ``rank_base``, ``rank_target``."""
        return cls(*(np.asarray(x, np.float64) for x in (cross, sq_base, sq_target)), **evidence)

    def cosine(self) -> np.ndarray:
        """``[n_b, n_t]`` float32 column cosines; a column that is zero over the shared rows gets 0."""
        denom = np.outer(np.sqrt(self.sq_base), np.sqrt(self.sq_target))
        cos = np.zeros(denom.shape, np.float32)
        np.divide(self.cross, denom, out=cos, where=denom > 0, casting="same_kind")  # float64 quotients, rounded once
        return cos

    @property
    def norm_product(self) -> float:
        """``|E_b|_F |E_t|_F`` over the shared rows."""
        return float(np.sqrt(self.sq_base.sum() * self.sq_target.sum()))


def _block_shift(rows: np.ndarray) -> int:
    """:func:`kernels.range_shift` of a block of rows (0 for an empty or non-finite block)."""
    if rows.size == 0:
        return 0
    if rows.dtype in host_blas.HALF_FLOATS and rows.flags.c_contiguous:  # the peak |x| from the bits, exactly
        peak = float(host_blas.peak_magnitudes(rows.reshape(1, -1))[0])
    else:
        peak = max(float(rows.max()), -float(rows.min()))  # no |rows| temporary
    return int(range_shift(peak))


def _scaled_down(x, shift: int):
    """``x * 2^-shift`` (``shift >= 0``) exactly, for host or device arrays, in normal-range steps."""
    if isinstance(x, np.ndarray):
        return np.ldexp(x, -shift).astype(x.dtype, copy=False)
    while shift > 0:
        step = min(shift, 126)
        x = x * np.float32(2.0**-step)
        shift -= step
    return x


def _take_rows(emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``emb[ids]``; a view, not a copy, when ``ids`` is a run of consecutive rows."""
    if ids.size and int(ids[-1]) - int(ids[0]) == ids.size - 1 and bool(np.all(np.diff(ids) == 1)):
        return emb[int(ids[0]) : int(ids[-1]) + 1]
    return emb[ids]


def embedding_cross(
    emb_base: np.ndarray, emb_target: np.ndarray, ids_base: np.ndarray, ids_target: np.ndarray
) -> EmbeddingCross:
    """Accumulates ``E_b^T E_t`` and the column norms over the shared rows, block by block, and
    measures each embedding's :class:`SampledRank` (the evidence ``check_alignment_evidence`` reads).

    Each embedding is multiplied by ``2^shift``, ``shift`` the smallest :func:`kernels.range_shift`
    of its blocks so far (0 for ordinary values, which are then summed exactly as stored); when
    a later block needs a smaller shift, the sums so far are scaled down to match (exactly).

    Args:
      emb_base: ``[V_b, n_b]`` base embedding, any float dtype (left in its stored dtype).
      emb_target: ``[V_t, n_t]`` target embedding.
      ids_base: ``[T]`` base rows of the shared tokens.
      ids_target: ``[T]`` target rows of the same tokens, in the same order.
    """
    n_b, n_t = emb_base.shape[1], emb_target.shape[1]
    block = block_rows(ids_base.size)
    host = default_platform() == "cpu"  # host BLAS: ~2x XLA:CPU's dot (see kernels.gram_layers_host)
    zeros = np.zeros if host else jnp.zeros
    cross, sq_b, sq_t = zeros((n_b, n_t), np.float32), zeros((n_b,), np.float32), zeros((n_t,), np.float32)
    shift_b = shift_t = None
    bf16 = host and emb_base.dtype == emb_target.dtype == host_blas.BF16 and host_blas.bf16_gemm_available()
    for start in range(0, ids_base.size, block):
        rb = _take_rows(emb_base, ids_base[start : start + block])
        rt = _take_rows(emb_target, ids_target[start : start + block])
        new_b, new_t = _block_shift(rb), _block_shift(rt)
        if shift_b is not None and (new_b < shift_b or new_t < shift_t):  # larger values: rescale the sums
            down_b, down_t = max(shift_b - new_b, 0), max(shift_t - new_t, 0)
            cross = _scaled_down(cross, down_b + down_t)
            sq_b, sq_t = _scaled_down(sq_b, 2 * down_b), _scaled_down(sq_t, 2 * down_t)
        shift_b = new_b if shift_b is None else min(shift_b, new_b)
        shift_t = new_t if shift_t is None else min(shift_t, new_t)
        if host:
            if bf16 and not shift_b and not shift_t:  # bf16 rows into a bf16 GEMM, float32 accumulation
                rb, rt = np.ascontiguousarray(rb), np.ascontiguousarray(rt)
                host_blas.cross_bf16(rb, rt, out=cross)
                sq_b += host_blas.column_squares(rb)
                sq_t += host_blas.column_squares(rt)
                continue
            rb, rt = rb.astype(np.float32, copy=False), rt.astype(np.float32, copy=False)  # views: read, never written
            if shift_b:
                rb = np.ldexp(rb, shift_b).astype(np.float32, copy=False)
            if shift_t:
                rt = np.ldexp(rt, shift_t).astype(np.float32, copy=False)
            cross += rb.T @ rt
            sq_b += np.einsum("ij,ij->j", rb, rb)
            sq_t += np.einsum("ij,ij->j", rt, rt)
            continue
        if rb.shape[0] < block:  # zero rows add nothing to any sum
            rb = np.concatenate([rb, np.zeros((block - rb.shape[0], n_b), rb.dtype)])
            rt = np.concatenate([rt, np.zeros((block - rt.shape[0], n_t), rt.dtype)])
        cross, sq_b, sq_t = column_cosine_accumulate(cross, sq_b, sq_t, jnp.asarray(rb), jnp.asarray(rt),
                                                     np.float32(2.0**shift_b), np.float32(2.0**shift_t))
    return EmbeddingCross.of(cross, sq_b, sq_t, rows=int(ids_base.size), rank_base=sampled_rank(emb_base, ids_base),
                             rank_target=sampled_rank(emb_target, ids_target))


def check_alignment_evidence(cross: EmbeddingCross, base: str, target: str) -> None:
    """Refuses a pair whose shared rows cannot identify the alignment (see the module docstring).

    Args:
      cross: the pair's sums (``embedding_cross``), ``n_b >= n_t`` columns.
      base: how to name the base model (its folder) in a message.
      target: how to name the target model.

    Raises:
      DegenerateAlignment: below the minimum evidence (a ``NumericalError``, exit 6), naming the
        model and what is missing.
    """
    n_b, n_t = cross.cross.shape
    if n_t < MIN_SAMPLES:
        names = " and ".join(dict.fromkeys(m for m, n in ((base, n_b), (target, n_t)) if n < MIN_SAMPLES))
        raise DegenerateAlignment(
            f"{names}: too few hidden dimensions for the unbiased CKA (n={n_t}, needs at least {MIN_SAMPLES}); "
            "the test scores models whose hidden size is at least 4: check config.json and the embedding"
        )
    least = max(MIN_RANK, -(-n_b // MIN_SHARED_DIVISOR))
    if cross.rows is not None and cross.rows < least:
        raise DegenerateAlignment(
            f"{base} and {target} share only {cross.rows} token(s) with embedding rows, fewer than {least} (a quarter "
            f"of the {n_b} hidden dimensions to align): degenerate alignment, the column cosines over so few rows "
            f"cannot identify the dimensions; compare models whose vocabularies share at least {least} tokens"
        )
    over = "the shared-token rows" if cross.rows is None else f"the {cross.rows} shared-token rows"
    for name, squares, sample in ((base, cross.sq_base, cross.rank_base), (target, cross.sq_target, cross.rank_target)):
        zero = int(np.count_nonzero(squares == 0))
        if zero:
            raise DegenerateAlignment(
                f"{name}: {zero} of {squares.size} embedding columns are zero over {over} (degenerate alignment: "
                "those dimensions cannot be matched); the embedding is damaged or a placeholder: fetch the real weights"
            )
        if sample is not None and sample.rank < min(MIN_RANK, sample.columns):
            raise DegenerateAlignment(
                f"{name}: the embedding is degenerate over the shared-token rows: {sample.columns} of its columns span "
                f"only {sample.rank} direction(s) over {sample.rows} rows, fewer than the {MIN_RANK} needed to tell "
                "its columns apart (degenerate alignment); the embedding is damaged or a placeholder: fetch the real "
                "weights"
            )


def column_cosine(
    emb_base: np.ndarray, emb_target: np.ndarray, ids_base: np.ndarray, ids_target: np.ndarray
) -> np.ndarray:
    """``[n_b, n_t]`` cosines between every base and target embedding column over the shared rows."""
    return embedding_cross(emb_base, emb_target, ids_base, ids_target).cosine()


def assign_dimensions(cos: np.ndarray) -> Alignment:
    """Solves the linear assignment on ``1 - |cos|`` (docs/method.md step 4) on the host.

    Args:
      cos: ``[n_b, n_t]`` column cosines, ``n_b >= n_t``.

    Returns:
      The alignment of the ``n_t`` target dimensions.

    Raises:
      NumericalError: the cosine matrix is not finite.
    """
    n_b, n_t = cos.shape
    if n_b < n_t:
        raise ValueError(f"base must be at least as wide as target, got {n_b} < {n_t}")
    if not np.isfinite(cos).all():
        raise NumericalError("embedding column cosines are not finite; the embeddings contain NaN/Inf")
    rows, cols = linear_sum_assignment(1.0 - np.abs(cos.astype(np.float64)))
    perm = np.empty(n_t, dtype=np.int32)
    perm[cols] = rows
    matched = cos[perm, np.arange(n_t)]
    signs = np.where(matched < 0, -1.0, 1.0).astype(np.float32)
    return Alignment(perm=perm, signs=signs, matched_cos=matched.astype(np.float32), base_dims=n_b)


@dataclasses.dataclass(frozen=True)
class Rotation:
    """An orthogonal map of the base's residual basis onto the target's (orthogonal Procrustes).

    Attributes:
      matrix: ``[n_b, n_t]`` float32 with orthonormal columns; the aligned base projection is
        ``W_b @ matrix`` and its Gram ``matrix^T K_b matrix``.
      fit: ``max_R <E_b R, E_t> / (|E_b| |E_t|)`` in ``[0, 1]``: 1 when the target embedding is
        exactly a rotation of the base's over the shared rows.
    """

    matrix: np.ndarray
    fit: float


def orthogonal_procrustes(cross: EmbeddingCross) -> Rotation:
    """The orthogonal ``R`` maximising ``<E_b R, E_t>``: ``R = U V^T`` for ``E_b^T E_t = U S V^T``."""
    u, sigma, vt = np.linalg.svd(cross.cross, full_matrices=False)
    denom = cross.norm_product
    return Rotation((u @ vt).astype(np.float32), float(sigma.sum() / denom) if denom > 0 else 0.0)


def permutation_fit(cross: EmbeddingCross, alignment: Alignment) -> float:
    """``<E_b P S, E_t> / (|E_b| |E_t|)`` for the signed permutation: comparable with ``Rotation.fit``."""
    denom = cross.norm_product
    matched = np.abs(cross.cross[alignment.perm, np.arange(alignment.target_dims)]).sum()
    return float(matched / denom) if denom > 0 else 0.0
