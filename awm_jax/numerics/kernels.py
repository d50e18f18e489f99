"""Numerical kernels: Gram matrices and unbiased linear CKA, one layer at a time, vmapped.

Conventions (docs/method.md step 6): a projection ``W`` is stored ``[d, n]`` (``d`` output rows,
``n`` residual dimensions). CKA treats the ``n`` residual dimensions as samples and the ``d``
rows as features, so ``X = W^T`` is ``[n, d]`` and the sample Gram matrix is
``K = X X^T = W^T W``, ``[n, n]``. A model's Grams depend on that model alone, so they are the
cacheable fingerprint; a pair's score only permutes, sign-flips and compares Grams (``O(n^2)``).

Every kernel is written for one layer and lifted with ``jax.vmap``; ``jax.jit`` sits on the
batched functions, whose shapes stay fixed across layer chunks so one compilation serves a whole
model. Matmuls use ``Precision.HIGHEST`` (TF32/bf16 defaults on GPU/TPU would cost ~1e-3 in a
score near 1); inputs are upcast to float32 before any accumulation.

Range. CKA is invariant to the scale of each Gram, but float32 is not: a Gram grows as ``c^2``
and the HSIC products as ``c^4`` when a projection is multiplied by ``c``, so a
function-preserving ``Wq * c``, ``Wk / c`` would underflow or overflow them for ``|log2 c|``
around 30. Two exact power-of-two normalisations keep every finite scale in range:

- a projection whose largest magnitude lies outside ``[2^-13, 2^12)`` (``SAFE_EXPONENT``) is
  multiplied by the power of two that brings it into ``[0.5, 1)`` before its Gram
  (:func:`range_shift`), so every Gram computed here has entries below ``d 2^24``; ordinary
  weights are used as stored, so their Grams are bit for bit what they were;
- the HSIC parts of a Gram are those of ``unit * K`` (``HsicParts.unit``, the power of two
  that brings its largest diagonal entry into ``[0.5, 1)``): the squares of the self-term are
  normalised inside their reduction, the row sums and the cross term ``<K, L>`` are scaled
  after theirs (a multiply inside the ``n^2`` cross-term reduction would double its time; the
  bound on the Grams keeps ``<K, L>`` in range: below ``n^2 d_K d_L 2^48 < 2^112`` for ``n``
  and ``d`` up to ``2^16``).

Multiplying by a power of two is exact in binary floating point, and every sum, product and
square root of the score commutes with it, so the scores of models whose values never left
float32's range are unchanged to the last bit.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "HIGHEST",
    "MIN_SAMPLES",
    "SAFE_EXPONENT",
    "SELF_TERM_FLOOR",
    "gram",
    "gram_layers",
    "gram_layers_host",
    "range_shift",
    "align_gram",
    "align_grams",
    "rotate_gram",
    "rotate_grams",
    "unbiased_center",
    "HsicParts",
    "hsic_parts",
    "unbiased_cka",
    "paired_cka",
    "paired_cka_from_parts",
    "aligned_cka",
    "hsic_parts_layers",
    "upper_parts",
    "grid_cka",
    "column_cosine_accumulate",
    "default_platform",
]

HIGHEST = jax.lax.Precision.HIGHEST


def default_platform() -> str:
    """Platform of the device computations go to (honours ``jax.default_device``)."""
    device = jax.config.jax_default_device
    return device.platform if device is not None else jax.default_backend()
#: A Gram whose centred self-term is below this fraction of its raw squared norm counts as
#: constant, and its CKA is 0. The reference compares the self-term with an absolute 1e-8, which
#: an adversary defeats by scaling ``Wq`` by a small ``c`` (and ``Wk`` by ``1/c``); a relative
#: floor keeps the score invariant to that scaling and still returns 0 for constant inputs.
SELF_TERM_FLOOR = 1e-8

#: The unbiased HSIC estimator divides by ``n - 3`` (and ``n - 2``): it needs at least 4 samples.
MIN_SAMPLES = 4

#: Values whose largest magnitude ``m 2^e`` (``m`` in ``[0.5, 1)``) has ``|e| <= SAFE_EXPONENT``
#: are used as stored; others are first multiplied by ``2^-e``. In that window the entries of a
#: Gram stay below ``d 2^24`` and its products with another Gram far inside float32's range;
#: trained weights and embeddings lie well within it.
SAFE_EXPONENT = 12
#: Shifts are clipped so the factor ``2^shift`` is a normal float32 (no denormal is ever formed).
_MAX_SHIFT = 126


def range_shift(max_abs: np.ndarray) -> np.ndarray:
    """The power-of-two exponent that brings values of the given largest magnitude into range.

    Args:
      max_abs: largest magnitudes (any shape, float).

    Returns:
      int32 array of the same shape: 0 when ``max_abs`` is within
      ``[2^-(SAFE_EXPONENT + 1), 2^SAFE_EXPONENT)``, zero or not finite; else ``-e`` (clipped to
      ``[-126, 126]``) for ``max_abs = m 2^e``, ``m`` in ``[0.5, 1)``, so the values times
      ``2^shift`` have their largest magnitude in ``[0.5, 1)``.
    """
    max_abs = np.asarray(max_abs, np.float64)
    _, e = np.frexp(np.where(np.isfinite(max_abs), max_abs, 0.0))
    return np.where(np.abs(e) > SAFE_EXPONENT, np.clip(-e, -_MAX_SHIFT, _MAX_SHIFT), 0).astype(np.int32)


def _pow2(e: jax.Array) -> jax.Array:
    """``2^e`` as an exact float32, for int32 ``e`` in ``[-126, 127]`` (built from its bits)."""
    return jax.lax.bitcast_convert_type((e.astype(jnp.int32) + 127) << 23, jnp.float32)


def _range_shift(max_abs: jax.Array) -> jax.Array:
    """:func:`range_shift` inside jit (int32 scalar)."""
    _, e = jnp.frexp(jnp.where(jnp.isfinite(max_abs), max_abs, 0.0))
    return jnp.where(jnp.abs(e) > SAFE_EXPONENT, jnp.clip(-e, -_MAX_SHIFT, _MAX_SHIFT), 0)


def gram(w: jax.Array) -> jax.Array:
    """Sample Gram matrix of one projection.

    A projection outside float32's comfortable range is first multiplied by a power of two
    (:func:`range_shift`): the Gram is then ``2^(2 shift) W^T W``, exactly, which CKA cannot tell
    from ``W^T W``.

    Args:
      w: ``[d, n]`` projection (Linear layout).

    Returns:
      ``[n, n]`` float32 ``K = W^T W`` up to a power-of-two factor (samples are the residual
      dimensions).
    """
    w = w.astype(jnp.float32)
    w = w * _pow2(_range_shift(jnp.max(jnp.abs(w))))
    return jnp.matmul(w.T, w, precision=HIGHEST)


#: ``[L, d, n] -> [L, n, n]``: one compilation per (L, d, n).
gram_layers = jax.jit(jax.vmap(gram))


def gram_layers_host(w: np.ndarray) -> np.ndarray:
    """``gram_layers`` computed with the host BLAS (float32 in, float32 accumulation).

    On the CPU backend XLA's dot runs at about half the throughput of the host's optimised
    sgemm (``benchmarks/pair.py`` measures both), so the fingerprint uses this there; on
    accelerators the jitted kernel runs. Both are tested against the same float64 reference.

    Args:
      w: ``[L, d, n]`` float32 projections, or bfloat16 ones (as stored: no float32 copy is
        made when a bf16 GEMM is available and no layer needs a range shift).

    Returns:
      ``[L, n, n]`` float32 Grams, each up to the power-of-two factor of :func:`gram` (the same
      factor: both paths use :func:`range_shift`).
    """
    from awm_jax.numerics import host_blas

    w = np.asarray(w)
    if w.dtype == host_blas.BF16 and w.size and host_blas.bf16_gemm_available():
        if not range_shift(host_blas.peak_magnitudes(w)).any():
            return host_blas.gram_layers_bf16(w)
    w = np.asarray(w, np.float32)
    if w.size:
        shift = range_shift(np.maximum(w.max(axis=(1, 2)), -w.min(axis=(1, 2))))
        if shift.any():  # a copy only for layers outside the safe range (exact: powers of two)
            w = np.ldexp(w, shift[:, None, None])
        elif host_blas.bf16_gemm_available():  # a bf16 GEMM (oneMKL on AMX, XLA), float32 accumulation
            w16 = host_blas.exact_bf16(w)  # only when every value is a bf16 value: then the Gram is exact
            if w16 is not None:
                return host_blas.gram_layers_bf16(w16)
    return np.matmul(w.transpose(0, 2, 1), w)


def align_gram(k: jax.Array, perm: jax.Array, signs: jax.Array) -> jax.Array:
    """Applies the dimension alignment to a base Gram: ``K'[i, j] = s_i s_j K[p_i, p_j]``.

    Equivalent to the Gram of ``W[:, p] * s`` (docs/method.md step 5) without touching ``W``.

    Args:
      k: ``[n_b, n_b]`` base Gram.
      perm: ``[n_t]`` int, base dimension matched to each target dimension.
      signs: ``[n_t]`` float, +1/-1.

    Returns:
      ``[n_t, n_t]`` aligned Gram.
    """
    # ``clip`` drops the out-of-bounds handling a permutation never needs (~1.4x on XLA:CPU)
    rows = jnp.take(k, perm, axis=0, mode="clip")
    return jnp.take(rows, perm, axis=1, mode="clip") * (signs[:, None] * signs[None, :])


def unbiased_center(k: jax.Array) -> jax.Array:
    """Unbiased (U-statistic) centering of a Gram matrix, Song et al. 2012.

    Zero the diagonal; ``m = colsum / (n - 2)``; ``m -= sum(m) / (2 (n - 1))``;
    ``K_c = K - m 1^T - 1 m^T``; zero the diagonal again. ``<K_c, L_c>_F`` is then
    ``n (n - 3)`` times the unbiased HSIC estimator. The scores use the equivalent closed form
    (:class:`HsicParts`), which never materialises ``K_c``; this explicit form documents the
    definition and is checked against it in the tests.

    Args:
      k: ``[n, n]`` symmetric Gram, ``n >= MIN_SAMPLES``.

    Returns:
      ``[n, n]`` centred matrix with zero diagonal.
    """
    n = k.shape[0]
    _check_samples(n)
    off = 1.0 - jnp.eye(n, dtype=k.dtype)
    k = k * off
    m = jnp.sum(k, axis=0) / (n - 2)
    m = m - jnp.sum(m) / (2 * (n - 1))
    return (k - m[None, :] - m[:, None]) * off


class HsicParts(NamedTuple):
    """What the unbiased HSIC of a Gram ``K`` needs besides the cross term.

    With ``K~`` = ``K`` with a zero diagonal, ``n (n - 3) HSIC_u(K, L)`` equals
    ``<K~, L~> + (1'K~1)(1'L~1) / ((n - 1)(n - 2)) - 2 / (n - 2) (K~1)'(L~1)``, and
    ``<K~, L~> = <K, L> - diag(K)'diag(L)``: no zero-diagonal copy is ever formed.

    A Gram may also be given in *upper form*: its upper triangle with zeros below the diagonal
    (``U``, ``K = U + U^T - diag(K)``), which is how a stored Gram unpacks without mirroring.
    Then its row sums are ``U 1 + U^T 1 - diag(K)``, ``<K, K> = 2 <U, U> - |diag(K)|^2`` and
    ``<A, K> = 2 <A, U> - diag(A)'diag(K)`` for a symmetric ``A``.

    Every part is of the normalised Gram ``unit * K``, ``unit`` the power of two that brings the
    largest diagonal entry into ``[0.5, 1)`` (a Gram's entries are at most its largest diagonal
    entry in magnitude), so the self-term stays in float32's range whatever the scale of ``K``;
    CKA is invariant to it, and, a power of two, it changes no rounding.

    Attributes:
      diag: ``[n]`` the diagonal of ``unit * K``.
      rows: ``[n]`` row sums ``unit * K~ 1``.
      total: ``unit * 1'K~1``.
      self_term: ``n (n - 3) HSIC_u(unit * K, unit * K)``.
      scale: ``<unit * K, unit * K>`` (with the diagonal), the reference for the constant-matrix floor.
      unit: the float32 power of two.
    """

    diag: jax.Array
    rows: jax.Array
    total: jax.Array
    self_term: jax.Array
    scale: jax.Array
    unit: jax.Array


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    # Row-wise products summed, then a sum over rows: two short accumulations instead of one of n^2.
    return jnp.sum(jnp.sum(a * b, axis=1))


def _check_samples(n: int) -> None:
    if n < MIN_SAMPLES:  # a shape: checked when the kernel is traced
        raise ValueError(f"the unbiased CKA needs at least {MIN_SAMPLES} samples (residual dimensions), got {n}")


def _hsic(k: jax.Array, kp: HsicParts, l: jax.Array, lp: HsicParts, kl: jax.Array | None = None,
          upper: bool = False) -> jax.Array:
    """``n (n - 3) HSIC_u`` of the normalised Grams ``kp.unit * K``, ``lp.unit * L`` from the raw
    Grams and their parts (``kl`` = their ``<., .>`` if known; ``upper``: ``L`` in upper form, ``K``
    whole and exactly symmetric).

    ``<K, L>`` is summed as stored and then scaled (see the module docstring: in range for the
    Grams of :func:`gram`, and for one Gram of any magnitude from ``2^-100`` to ``2^100``
    against an ordinary one)."""
    n = kp.diag.shape[0]
    _check_samples(n)
    if kl is None:
        kl = _dot(k, l) * kp.unit * lp.unit
        if upper:
            kl = 2.0 * kl - jnp.dot(kp.diag, lp.diag, precision=HIGHEST)
    return (kl - jnp.dot(kp.diag, lp.diag, precision=HIGHEST) + kp.total * lp.total / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * jnp.dot(kp.rows, lp.rows, precision=HIGHEST))


def _unit(diag: jax.Array) -> jax.Array:
    """The power of two bringing the largest ``|K_ii|`` of a Gram's diagonal into ``[0.5, 1)``
    (1 for a zero Gram)."""
    _, e = jnp.frexp(jnp.max(jnp.abs(diag)))
    return _pow2(jnp.clip(-e, -_MAX_SHIFT, _MAX_SHIFT))


def hsic_parts(k: jax.Array, upper: bool = False) -> HsicParts:
    """The :class:`HsicParts` of a Gram, computed once per matrix (two passes over it, three in
    upper form).

    Args:
      k: ``[n, n]`` symmetric Gram, ``n >= MIN_SAMPLES``, or its upper form when ``upper``.
    """
    _check_samples(k.shape[0])
    unit = _unit(jnp.diagonal(k))
    diag = jnp.diagonal(k) * unit
    sums = jnp.sum(k, axis=1) + jnp.sum(k, axis=0) if upper else jnp.sum(k, axis=1)
    rows = sums * unit - (2.0 * diag if upper else diag)  # scaled after the sum: ``unit * k`` feeding
    normalised = k * unit  # several reductions would be materialised (measured 10x slower on XLA:CPU)
    scale = _dot(normalised, normalised)
    if upper:
        scale = 2.0 * scale - jnp.dot(diag, diag, precision=HIGHEST)
    partial = HsicParts(diag, rows, jnp.sum(rows), jnp.zeros((), k.dtype), scale, unit)
    return partial._replace(self_term=_hsic(k, partial, k, partial, kl=scale))


def _cka(kl: jax.Array, kp: HsicParts, lp: HsicParts) -> jax.Array:
    ok = (kp.self_term > SELF_TERM_FLOOR * kp.scale) & (lp.self_term > SELF_TERM_FLOOR * lp.scale)
    return jnp.where(ok, kl / jnp.sqrt(jnp.where(ok, kp.self_term * lp.self_term, 1.0)), 0.0)


def unbiased_cka(k: jax.Array, l: jax.Array) -> jax.Array:
    """Unbiased linear CKA of two Gram matrices over the same samples.

    Args:
      k: ``[n, n]`` Gram of the first representation, ``n >= MIN_SAMPLES``.
      l: ``[n, n]`` Gram of the second.

    Returns:
      Scalar ``HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))``; 0 when either Gram is
      constant (see ``SELF_TERM_FLOOR``).

    Raises:
      ValueError: ``n < MIN_SAMPLES`` (when traced).
    """
    kp, lp = hsic_parts(k), hsic_parts(l)
    return _cka(_hsic(k, kp, l, lp), kp, lp)


def rotate_gram(k: jax.Array, rotation: jax.Array) -> jax.Array:
    """``R^T K R``: the Gram of ``W R`` (``[n_b, n_b]`` -> ``[n_t, n_t]``), the orthogonal alignment."""
    return jnp.matmul(rotation.T, jnp.matmul(k, rotation, precision=HIGHEST), precision=HIGHEST)


#: ``[c, n_b, n_b], [n_b, n_t] -> [c, n_t, n_t]``: the orthogonal alignment of a chunk of base Grams.
rotate_grams = jax.jit(jax.vmap(rotate_gram, in_axes=(0, None)))

#: ``[c, n_b, n_b] -> [c, n_t, n_t]``: the alignment applied to a chunk of base Grams. Kept a
#: separate compiled stage: fused into the CKA reductions, XLA:CPU recomputes the gather per
#: consumer (measured 3.5x slower than the two stages).
align_grams = jax.jit(jax.vmap(align_gram, in_axes=(0, None, None)))


@functools.partial(jax.jit, static_argnames="upper")
def hsic_parts_layers(k: jax.Array, upper: bool = False) -> HsicParts:
    """``[c, n, n] -> HsicParts`` with a leading ``c``: each Gram's parts, computed once and
    reused for every pairing it takes part in (``upper``: the Grams are in upper form)."""
    return jax.vmap(functools.partial(hsic_parts, upper=upper))(k)


@jax.jit
def upper_parts(u: jax.Array) -> HsicParts:
    """The :class:`HsicParts` of one Gram in upper form, compiled for one ``[n, n]`` matrix.

    What a fingerprint stores with each layer (``fingerprint.grams``), and how the parts of a Gram
    held in memory are computed too: one layer per call, so a layer's parts are the same bits
    whichever group of layers it is read with, from memory or from the cache."""
    return hsic_parts(u, upper=True)


@functools.partial(jax.jit, static_argnames="upper")
def paired_cka_from_parts(k: jax.Array, kp: HsicParts, l: jax.Array, lp: HsicParts, upper: bool = False) -> jax.Array:
    """``paired_cka`` with both sides' :class:`HsicParts` given: one pass over each pair of Grams.

    Args:
      k: ``[c, n, n]`` aligned base Grams (whole); ``kp`` their parts (``hsic_parts_layers``).
      l: ``[c, n, n]`` target Grams; ``lp`` their parts.
      upper: ``l`` is in upper form (:class:`HsicParts`).

    Returns:
      ``[c]`` scores.
    """
    return jax.vmap(lambda a, ap, b, bp: _cka(_hsic(a, ap, b, bp, upper=upper), ap, bp))(k, kp, l, lp)


def _aligned_cka_layer(k: jax.Array, perm: jax.Array | None, signs: jax.Array | None, targets: tuple,
                       tparts: tuple) -> jax.Array:
    """Scores of one base Gram, aligned, against target Grams in upper form, from one pass over
    the aligned Gram ``K' = S P K P^T S``, which is never stored.

    A variadic reduction along the rows of ``unit * K'`` sums, per row, its entries, their
    squares and their products with each target's row: every part of ``K'`` (its diagonal is
    ``K``'s, permuted) and every ``<K', U_t>`` at once. ``unit`` is a power of two, so the sums
    are those of ``K'`` scaled exactly.
    """
    aligned = perm is not None
    diag_raw = jnp.diagonal(k)[perm] if aligned else jnp.diagonal(k)
    unit = _unit(diag_raw)
    g = (align_gram(k, perm, signs) if aligned else k) * unit
    operands = (g, g * g) + tuple(g * t for t in targets)
    zero = jnp.zeros((), g.dtype)
    sums = jax.lax.reduce(operands, (zero,) * len(operands), lambda x, y: tuple(a + b for a, b in zip(x, y)), (1,))
    diag = diag_raw * unit
    rows = sums[0] - diag
    partial = HsicParts(diag, rows, jnp.sum(rows), zero, jnp.sum(sums[1]), unit)
    kp = partial._replace(self_term=_hsic(None, partial, None, partial, kl=partial.scale))
    # <K', L> = 2 <K', U> - diag(K')'diag(L) for a target in upper form U
    kls = [2.0 * jnp.sum(cross) * tp.unit - jnp.dot(diag, tp.diag, precision=HIGHEST)
           for cross, tp in zip(sums[2:], tparts)]
    return jnp.stack([_cka(_hsic(None, kp, None, tp, kl=kl), kp, tp) for kl, tp in zip(kls, tparts)])


@functools.partial(jax.jit, static_argnames="shifts")
def aligned_cka(k: jax.Array, perm: jax.Array | None, signs: jax.Array | None, u: jax.Array, up: HsicParts,
                shifts: tuple[int, ...]) -> jax.Array:
    """Base layers, aligned by a signed permutation, against target layers in upper form at
    several offsets.

    The alignment, the base's HSIC parts and every pairing's cross term come from one fused pass
    over each aligned base Gram (:func:`_aligned_cka_layer`). Stored and then read by separate
    reductions, an aligned 4096-wide Gram costs a 64 MB write and four reads; fused, the gather
    and all the reductions take less time than the gather alone did (XLA:CPU).

    Args:
      k: ``[c, n_b, n_b]`` whole base Grams.
      perm: ``[n_t]`` base dimension of each target dimension (``None``, and ``signs`` too: the
        base Grams are aligned already).
      signs: ``[n_t]`` +1/-1.
      u: ``[c, n_t, n_t]`` target Grams in upper form (:class:`HsicParts`); ``up`` their parts
        (``hsic_parts_layers(u, True)``, or :func:`upper_parts` of each layer).
      shifts: offsets ``s``: base position ``j`` is scored against target position ``j + s mod c``.

    Returns:
      ``[c, len(shifts)]`` scores.
    """
    rolled = lambda x, s: jnp.roll(x, -s, axis=0)  # noqa: E731 - fused into the reduction, not copied
    targets = tuple(rolled(u, s) for s in shifts)
    tparts = tuple(jax.tree_util.tree_map(lambda x, s=s: rolled(x, s), up) for s in shifts)
    return jax.vmap(_aligned_cka_layer, in_axes=(0, None, None, 0, 0))(k, perm, signs, targets, tparts)


@functools.partial(jax.jit, static_argnames="upper")
def paired_cka(k_aligned: jax.Array, l_target: jax.Array, upper: bool = False) -> jax.Array:
    """CKA of aligned base layers against target layers, layer ``i`` with layer ``i``.

    Args:
      k_aligned: ``[c, n_t, n_t]`` aligned base Grams (``align_grams``).
      l_target: ``[c, n_t, n_t]`` target Grams.
      upper: ``l_target`` is in upper form (:class:`HsicParts`).

    Returns:
      ``[c]`` scores.
    """
    return paired_cka_from_parts(k_aligned, hsic_parts_layers(k_aligned), l_target, hsic_parts_layers(l_target, upper),
                                 upper)


@functools.partial(jax.jit, static_argnames="upper")
def grid_cka(k_aligned: jax.Array, l_target: jax.Array, upper: bool = False) -> jax.Array:
    """CKA of every aligned base layer against every target layer.

    Args:
      k_aligned: ``[a, n_t, n_t]`` aligned base Grams (``align_grams``).
      l_target: ``[b, n_t, n_t]`` target Grams.
      upper: ``l_target`` is in upper form (:class:`HsicParts`).

    Returns:
      ``[a, b]`` scores.
    """
    kp = jax.vmap(hsic_parts)(k_aligned)
    lp = jax.vmap(functools.partial(hsic_parts, upper=upper))(l_target)
    one_vs_all = jax.vmap(functools.partial(_hsic, upper=upper), in_axes=(None, None, 0, 0))
    kl = jax.vmap(one_vs_all, in_axes=(0, 0, None, None))(k_aligned, kp, l_target, lp)
    pair_cka = jax.vmap(jax.vmap(_cka, in_axes=(0, None, 0)), in_axes=(0, 0, None))
    return pair_cka(kl, kp, lp)


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def column_cosine_accumulate(
    cross: jax.Array, sq_base: jax.Array, sq_target: jax.Array, rows_base: jax.Array, rows_target: jax.Array,
    scale_base: jax.Array | float = 1.0, scale_target: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adds one block of shared embedding rows to the column-cosine sums.

    The cosine ``S[i, j] = <e_b[:, i], e_t[:, j]> / (|e_b[:, i]| |e_t[:, j]|)`` over the shared
    rows is accumulated block by block so the embeddings never need to be upcast whole. It is
    invariant to a scale of either embedding, so each may be multiplied by a power of two
    (the same for all its blocks) to keep the sums in range.

    Args:
      cross: ``[n_b, n_t]`` running ``E_b^T E_t``.
      sq_base: ``[n_b]`` running squared column norms of ``E_b``.
      sq_target: ``[n_t]`` running squared column norms of ``E_t``.
      rows_base: ``[r, n_b]`` block of base rows (any float dtype; zero rows pad a short block).
      rows_target: ``[r, n_t]`` the matching target rows.
      scale_base: float32 factor the base rows are multiplied by (a power of two; traced, so a
        new value does not recompile).
      scale_target: likewise for the target rows.

    Returns:
      The updated ``(cross, sq_base, sq_target)``.
    """
    b = rows_base.astype(jnp.float32) * scale_base
    t = rows_target.astype(jnp.float32) * scale_target
    cross = cross + jnp.matmul(b.T, t, precision=HIGHEST)
    return cross, sq_base + jnp.sum(b * b, axis=0), sq_target + jnp.sum(t * t, axis=0)
