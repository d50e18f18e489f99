"""Alignment of the residual dimensions of two models (docs/method.md steps 2-5, and beyond).

``E_b^T E_t`` over the shared-token rows is accumulated block by block. The paper's alignment
(``assignment``) turns it into column cosines and solves the linear assignment maximising the
total ``|cos|`` on the host with ``scipy.optimize.linear_sum_assignment``: every target dimension
``j`` gets a distinct base dimension ``p(j)`` and a sign ``s_j``. A dense rotation of the
residual stream (function-preserving once the normalisation gains are folded into the
neighbouring matrices) defeats any permutation; ``orthogonal`` fits an orthogonal map instead
(Procrustes, an SVD of the same ``E_b^T E_t``), and ``auto`` picks between the two from how well
each fits the embeddings.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from awm_jax.errors import NumericalError
from awm_jax.numerics.kernels import column_cosine_accumulate, default_platform

__all__ = [
    "ALIGNMENT_MODES",
    "Alignment",
    "EmbeddingCross",
    "ROW_BLOCK",
    "Rotation",
    "assign_dimensions",
    "block_rows",
    "choose_alignment",
    "column_cosine",
    "embedding_cross",
    "orthogonal_procrustes",
    "permutation_fit",
]

#: ``assignment``: the paper's signed permutation; ``orthogonal``: a Procrustes rotation, which also
#: undoes a dense rotation of the residual stream; ``auto``: the permutation unless the rotation
#: fits the embeddings far better. Defined in :mod:`awm_jax.options`.
from awm_jax.options import ALIGNMENT_MODES  # noqa: E402

#: Shared rows per accumulation block (padded blocks keep one compiled shape per model pair).
ROW_BLOCK = 8192


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


@dataclasses.dataclass(frozen=True)
class EmbeddingCross:
    """Sums over the shared rows from which both alignments are derived.

    Attributes:
      cross: ``[n_b, n_t]`` float64 ``E_b^T E_t``.
      sq_base: ``[n_b]`` squared column norms of ``E_b``.
      sq_target: ``[n_t]`` squared column norms of ``E_t``.
    """

    cross: np.ndarray
    sq_base: np.ndarray
    sq_target: np.ndarray

    @classmethod
    def of(cls, cross, sq_base, sq_target) -> "EmbeddingCross":
        """The sums as float64 host arrays, from any array type (float32 accumulators)."""
        return cls(*(np.asarray(x, np.float64) for x in (cross, sq_base, sq_target)))

    def cosine(self) -> np.ndarray:
        """``[n_b, n_t]`` float32 column cosines; a column that is zero over the shared rows gets 0."""
        denom = np.outer(np.sqrt(self.sq_base), np.sqrt(self.sq_target))
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where(denom > 0, self.cross / np.where(denom > 0, denom, 1.0), 0.0)
        return cos.astype(np.float32)

    @property
    def norm_product(self) -> float:
        """``|E_b|_F |E_t|_F`` over the shared rows."""
        return float(np.sqrt(self.sq_base.sum() * self.sq_target.sum()))


def embedding_cross(
    emb_base: np.ndarray, emb_target: np.ndarray, ids_base: np.ndarray, ids_target: np.ndarray
) -> EmbeddingCross:
    """Accumulates ``E_b^T E_t`` and the column norms over the shared rows, block by block.

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
    for start in range(0, ids_base.size, block):
        rb = emb_base[ids_base[start : start + block]]
        rt = emb_target[ids_target[start : start + block]]
        if host:
            rb, rt = rb.astype(np.float32), rt.astype(np.float32)
            cross += rb.T @ rt
            sq_b += np.einsum("ij,ij->j", rb, rb)
            sq_t += np.einsum("ij,ij->j", rt, rt)
            continue
        if rb.shape[0] < block:  # zero rows add nothing to any sum
            rb = np.concatenate([rb, np.zeros((block - rb.shape[0], n_b), rb.dtype)])
            rt = np.concatenate([rt, np.zeros((block - rt.shape[0], n_t), rt.dtype)])
        cross, sq_b, sq_t = column_cosine_accumulate(cross, sq_b, sq_t, jnp.asarray(rb), jnp.asarray(rt))
    return EmbeddingCross.of(cross, sq_b, sq_t)


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


#: ``auto`` chooses the rotation when it fits the embeddings at least this well ...
AUTO_MIN_ROTATION_FIT = 0.5
#: ... and the best signed permutation explains less than this fraction of what the rotation does.
AUTO_MAX_PERMUTATION_SHARE = 0.5


def choose_alignment(mode: str, perm_fit: float, rotation_fit: float) -> tuple[str, str]:
    """Resolves ``assignment`` / ``orthogonal`` / ``auto`` to the alignment used, with the reason."""
    if mode != "auto":
        return mode, f"requested {mode}"
    if rotation_fit >= AUTO_MIN_ROTATION_FIT and perm_fit < AUTO_MAX_PERMUTATION_SHARE * rotation_fit:
        return "orthogonal", (
            f"the residual basis looks rotated: an orthogonal map fits the embeddings {rotation_fit:.3f}, "
            f"the best signed permutation only {perm_fit:.3f}"
        )
    return "assignment", (
        f"signed permutation fits the embeddings {perm_fit:.3f} (orthogonal {rotation_fit:.3f}); the paper's alignment"
    )
