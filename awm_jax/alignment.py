"""Alignment of the residual dimensions of two models (ALGORITHM.md steps 2-5).

The column cosine between the two embeddings over the shared-token rows is accumulated in JAX,
block by block; the linear assignment maximising the total ``|cos|`` runs on the host with
``scipy.optimize.linear_sum_assignment``. The result maps every target dimension ``j`` to a
distinct base dimension ``p(j)`` with a sign ``s_j``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from awm_jax.errors import NumericalError
from awm_jax.kernels import column_cosine_accumulate, default_platform

__all__ = ["Alignment", "column_cosine", "assign_dimensions", "ROW_BLOCK"]

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


def _block_size(rows: int) -> int:
    return min(ROW_BLOCK, 1 << max(rows - 1, 1).bit_length())


def column_cosine(
    emb_base: np.ndarray, emb_target: np.ndarray, ids_base: np.ndarray, ids_target: np.ndarray
) -> np.ndarray:
    """Cosine between every base and every target embedding column over the shared rows.

    Args:
      emb_base: ``[V_b, n_b]`` base embedding, any float dtype (left in its stored dtype).
      emb_target: ``[V_t, n_t]`` target embedding.
      ids_base: ``[T]`` base rows of the shared tokens.
      ids_target: ``[T]`` target rows of the same tokens, in the same order.

    Returns:
      ``[n_b, n_t]`` float32 cosines; a column that is zero over the shared rows gets 0.
    """
    n_b, n_t = emb_base.shape[1], emb_target.shape[1]
    block = _block_size(ids_base.size)
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
    norm_b = np.sqrt(np.asarray(sq_b, np.float64))
    norm_t = np.sqrt(np.asarray(sq_t, np.float64))
    denom = np.outer(norm_b, norm_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, np.asarray(cross, np.float64) / np.where(denom > 0, denom, 1.0), 0.0)
    return cos.astype(np.float32)


def assign_dimensions(cos: np.ndarray) -> Alignment:
    """Solves the linear assignment on ``1 - |cos|`` (ALGORITHM.md step 4) on the host.

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
