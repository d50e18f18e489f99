"""Numerical kernels: Gram matrices and unbiased linear CKA, one layer at a time, vmapped.

Conventions (ALGORITHM.md step 6): a projection ``W`` is stored ``[d, n]`` (``d`` output rows,
``n`` residual dimensions). CKA treats the ``n`` residual dimensions as samples and the ``d``
rows as features, so ``X = W^T`` is ``[n, d]`` and the sample Gram matrix is
``K = X X^T = W^T W``, ``[n, n]``. A model's Grams depend on that model alone, so they are the
cacheable fingerprint; a pair's score only permutes, sign-flips and compares Grams (``O(n^2)``).

Every kernel is written for one layer and lifted with ``jax.vmap``; ``jax.jit`` sits on the
batched functions, whose shapes stay fixed across layer chunks so one compilation serves a whole
model. Matmuls use ``Precision.HIGHEST`` (TF32/bf16 defaults on GPU/TPU would cost ~1e-3 in a
score near 1); inputs are upcast to float32 before any accumulation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "HIGHEST",
    "SELF_TERM_FLOOR",
    "gram",
    "gram_layers",
    "align_gram",
    "unbiased_center",
    "unbiased_cka",
    "paired_cka",
    "grid_cka",
    "column_cosine_accumulate",
]

HIGHEST = jax.lax.Precision.HIGHEST
#: A Gram whose centred self-term is below this fraction of its raw squared norm counts as
#: constant, and its CKA is 0. The reference compares the self-term with an absolute 1e-8, which
#: an adversary defeats by scaling ``Wq`` by a small ``c`` (and ``Wk`` by ``1/c``); a relative
#: floor keeps the score invariant to that scaling and still returns 0 for constant inputs.
SELF_TERM_FLOOR = 1e-8


def gram(w: jax.Array) -> jax.Array:
    """Sample Gram matrix of one projection.

    Args:
      w: ``[d, n]`` projection (Linear layout).

    Returns:
      ``[n, n]`` float32 ``K = W^T W`` (samples are the residual dimensions).
    """
    w = w.astype(jnp.float32)
    return jnp.matmul(w.T, w, precision=HIGHEST)


#: ``[L, d, n] -> [L, n, n]``: one compilation per (L, d, n).
gram_layers = jax.jit(jax.vmap(gram))


def align_gram(k: jax.Array, perm: jax.Array, signs: jax.Array) -> jax.Array:
    """Applies the dimension alignment to a base Gram: ``K'[i, j] = s_i s_j K[p_i, p_j]``.

    Equivalent to the Gram of ``W[:, p] * s`` (ALGORITHM.md step 5) without touching ``W``.

    Args:
      k: ``[n_b, n_b]`` base Gram.
      perm: ``[n_t]`` int, base dimension matched to each target dimension.
      signs: ``[n_t]`` float, +1/-1.

    Returns:
      ``[n_t, n_t]`` aligned Gram.
    """
    return k[perm][:, perm] * (signs[:, None] * signs[None, :])


def unbiased_center(k: jax.Array) -> jax.Array:
    """Unbiased (U-statistic) centering of a Gram matrix, Song et al. 2012.

    Zero the diagonal; ``m = colsum / (n - 2)``; ``m -= sum(m) / (2 (n - 1))``;
    ``K_c = K - m 1^T - 1 m^T``; zero the diagonal again. ``<K_c, L_c>_F`` is then
    ``n (n - 3)`` times the unbiased HSIC estimator.

    Args:
      k: ``[n, n]`` symmetric Gram, ``n >= 4``.

    Returns:
      ``[n, n]`` centred matrix with zero diagonal.
    """
    n = k.shape[0]
    off = 1.0 - jnp.eye(n, dtype=k.dtype)
    k = k * off
    m = jnp.sum(k, axis=0) / (n - 2)
    m = m - jnp.sum(m) / (2 * (n - 1))
    return (k - m[None, :] - m[:, None]) * off


def _frobenius(a: jax.Array, b: jax.Array) -> jax.Array:
    # Row-wise dot products, then a sum over rows: two short accumulations instead of one of n^2.
    return jnp.sum(jnp.einsum("ij,ij->i", a, b, precision=HIGHEST))


def unbiased_cka(k: jax.Array, l: jax.Array) -> jax.Array:
    """Unbiased linear CKA of two Gram matrices over the same samples.

    Args:
      k: ``[n, n]`` Gram of the first representation.
      l: ``[n, n]`` Gram of the second.

    Returns:
      Scalar ``<K_c, L_c> / sqrt(<K_c, K_c> <L_c, L_c>)``; 0 when either Gram is constant
      (see ``SELF_TERM_FLOOR``).
    """
    kc, lc = unbiased_center(k), unbiased_center(l)
    kk, ll = _frobenius(kc, kc), _frobenius(lc, lc)
    ok = _not_constant(kk, k) & _not_constant(ll, l)
    return jnp.where(ok, _frobenius(kc, lc) / jnp.sqrt(jnp.where(ok, kk * ll, 1.0)), 0.0)


def _not_constant(self_term: jax.Array, k: jax.Array) -> jax.Array:
    return self_term > SELF_TERM_FLOOR * _frobenius(k, k)


def _aligned_cka(k_base: jax.Array, l_target: jax.Array, perm: jax.Array, signs: jax.Array) -> jax.Array:
    return unbiased_cka(align_gram(k_base, perm, signs), l_target)


@jax.jit
def paired_cka(k_base: jax.Array, l_target: jax.Array, perm: jax.Array, signs: jax.Array) -> jax.Array:
    """CKA of aligned base layers against target layers, layer ``i`` with layer ``i``.

    Args:
      k_base: ``[c, n_b, n_b]`` base Grams.
      l_target: ``[c, n_t, n_t]`` target Grams.
      perm: ``[n_t]`` alignment permutation.
      signs: ``[n_t]`` alignment signs.

    Returns:
      ``[c]`` scores.
    """
    return jax.vmap(_aligned_cka, in_axes=(0, 0, None, None))(k_base, l_target, perm, signs)


@jax.jit
def grid_cka(k_base: jax.Array, l_target: jax.Array, perm: jax.Array, signs: jax.Array) -> jax.Array:
    """CKA of every aligned base layer against every target layer.

    Args:
      k_base: ``[a, n_b, n_b]`` base Grams.
      l_target: ``[b, n_t, n_t]`` target Grams.
      perm: ``[n_t]`` alignment permutation.
      signs: ``[n_t]`` alignment signs.

    Returns:
      ``[a, b]`` scores.
    """
    aligned = jax.vmap(align_gram, in_axes=(0, None, None))(k_base, perm, signs)
    centred_k = jax.vmap(unbiased_center)(aligned)
    centred_l = jax.vmap(unbiased_center)(l_target)
    self_term = jax.vmap(lambda a: _frobenius(a, a))
    kk, ll = self_term(centred_k), self_term(centred_l)
    kl = jnp.einsum("aij,bij->ab", centred_k, centred_l, precision=HIGHEST)
    ok = (jax.vmap(_not_constant)(kk, aligned)[:, None]) & (jax.vmap(_not_constant)(ll, l_target)[None, :])
    denom = jnp.sqrt(jnp.where(ok, kk[:, None] * ll[None, :], 1.0))
    return jnp.where(ok, kl / denom, 0.0)


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def column_cosine_accumulate(
    cross: jax.Array, sq_base: jax.Array, sq_target: jax.Array, rows_base: jax.Array, rows_target: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adds one block of shared embedding rows to the column-cosine sums.

    The cosine ``S[i, j] = <e_b[:, i], e_t[:, j]> / (|e_b[:, i]| |e_t[:, j]|)`` over the shared
    rows is accumulated block by block so the embeddings never need to be upcast whole.

    Args:
      cross: ``[n_b, n_t]`` running ``E_b^T E_t``.
      sq_base: ``[n_b]`` running squared column norms of ``E_b``.
      sq_target: ``[n_t]`` running squared column norms of ``E_t``.
      rows_base: ``[r, n_b]`` block of base rows (any float dtype; zero rows pad a short block).
      rows_target: ``[r, n_t]`` the matching target rows.

    Returns:
      The updated ``(cross, sq_base, sq_target)``.
    """
    b = rows_base.astype(jnp.float32)
    t = rows_target.astype(jnp.float32)
    cross = cross + jnp.matmul(b.T, t, precision=HIGHEST)
    return cross, sq_base + jnp.sum(b * b, axis=0), sq_target + jnp.sum(t * t, axis=0)
