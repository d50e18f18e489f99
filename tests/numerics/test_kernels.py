"""Kernels against a float64 numpy reference written straight from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from awm_jax.numerics import kernels
from conftest import count_compilations


def hsic_u(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012), float64, from the trace formula."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    return float(
        (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ kt @ lt @ one)
        / (n * (n - 3))
    )


def cka_u_reference(wx: np.ndarray, wy: np.ndarray) -> float:
    """CKA_u of projections ``[d, n]``: samples are the n residual dimensions."""
    x, y = wx.T.astype(np.float64), wy.T.astype(np.float64)
    k, l = x @ x.T, y @ y.T
    return hsic_u(k, l) / np.sqrt(hsic_u(k, k) * hsic_u(l, l))


def related(rng, n, d1, d2, noise):
    base = rng.standard_normal((d1, n))
    mix = rng.standard_normal((d2, d1)) / np.sqrt(d1)
    return base.astype(np.float32), (mix @ base + noise * rng.standard_normal((d2, n))).astype(np.float32)


@pytest.mark.parametrize("noise", [0.0, 1e-3, 0.3, 3.0, 100.0])
@pytest.mark.parametrize("shape", [(8, 8, 4), (64, 32, 16), (96, 128, 48)])
def test_unbiased_cka_matches_float64_reference(noise, shape):
    rng = np.random.default_rng(hash((noise, shape)) % 2**32)
    n, d1, d2 = shape
    wx, wy = related(rng, n, d1, d2, noise)
    got = float(kernels.unbiased_cka(kernels.gram(jnp.asarray(wx)), kernels.gram(jnp.asarray(wy))))
    want = cka_u_reference(wx, wy)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_cka_of_independent_matrices_is_near_zero_and_identical_is_one():
    rng = np.random.default_rng(0)
    wx = rng.standard_normal((256, 256)).astype(np.float32)
    wy = rng.standard_normal((256, 256)).astype(np.float32)
    kx, ky = kernels.gram(jnp.asarray(wx)), kernels.gram(jnp.asarray(wy))
    np.testing.assert_allclose(float(kernels.unbiased_cka(kx, kx)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(kernels.unbiased_cka(kx, ky)), cka_u_reference(wx, wy), atol=1e-6)
    assert abs(float(kernels.unbiased_cka(kx, ky))) < 0.02


def test_constant_input_scores_zero():
    k = jnp.zeros((16, 16))
    l = kernels.gram(jnp.asarray(np.random.default_rng(1).standard_normal((8, 16)), jnp.float32))
    assert float(kernels.unbiased_cka(k, l)) == 0.0


def test_align_gram_equals_gram_of_aligned_weights():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((12, 10)).astype(np.float32)
    perm = rng.permutation(10)[:7]
    signs = rng.choice([-1.0, 1.0], 7).astype(np.float32)
    want = kernels.gram(jnp.asarray(w[:, perm] * signs))
    got = kernels.align_gram(kernels.gram(jnp.asarray(w)), jnp.asarray(perm), jnp.asarray(signs))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-5)


def test_paired_and_grid_cka_agree_with_single_layer_kernel():
    rng = np.random.default_rng(3)
    n, layers = 24, 3
    wb = [rng.standard_normal((16, n)).astype(np.float32) for _ in range(layers)]
    wt = [(w + 0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in wb]
    kb = jnp.stack([kernels.gram(jnp.asarray(w)) for w in wb])
    kt = jnp.stack([kernels.gram(jnp.asarray(w)) for w in wt])
    perm, signs = jnp.arange(n), jnp.ones(n, jnp.float32)
    aligned = kernels.align_grams(kb, perm, signs)
    paired = np.asarray(kernels.paired_cka(aligned, kt))
    grid = np.asarray(kernels.grid_cka(aligned, kt))
    for i in range(layers):
        np.testing.assert_allclose(paired[i], cka_u_reference(wb[i], wt[i]), atol=2e-6)
        for j in range(layers):
            np.testing.assert_allclose(grid[i, j], cka_u_reference(wb[i], wt[j]), atol=2e-6)


def test_column_cosine_accumulation_matches_float64():
    rng = np.random.default_rng(4)
    eb = rng.standard_normal((300, 20)).astype(np.float32)
    et = rng.standard_normal((250, 12)).astype(np.float32)
    ids_b, ids_t = rng.permutation(300)[:180], rng.permutation(250)[:180]
    from awm_jax.numerics.alignment import column_cosine

    got = column_cosine(eb, et, ids_b, ids_t)
    b, t = eb[ids_b].astype(np.float64), et[ids_t].astype(np.float64)
    want = (b.T @ t) / np.outer(np.linalg.norm(b, axis=0), np.linalg.norm(t, axis=0))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_no_retracing_across_layer_chunks():
    """One compilation serves every chunk of layers of the same shapes."""
    rng = np.random.default_rng(5)
    n = 20
    perm, signs = jnp.arange(n), jnp.ones(n, jnp.float32)

    def chunk():
        w = jnp.asarray(rng.standard_normal((3, 8, n)), jnp.float32)
        g = kernels.gram_layers(w)
        kernels.paired_cka(kernels.align_grams(g, perm, signs), g).block_until_ready()

    chunk()  # compiles each kernel once for these shapes
    with count_compilations() as compiled:
        for _ in range(3):
            chunk()
    assert compiled == [], "later chunks of the same shapes reuse the executables"


def test_bf16_inputs_are_upcast_before_accumulation():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    g16 = kernels.gram(jnp.asarray(w, jnp.bfloat16))
    assert g16.dtype == jnp.float32
    w_rounded = np.asarray(jnp.asarray(w, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(g16), w_rounded.T.astype(np.float64) @ w_rounded, rtol=1e-5, atol=1e-4)


def test_kernels_are_jit_compatible_under_default_precision_context():
    with jax.default_matmul_precision("bfloat16"):
        rng = np.random.default_rng(7)
        wx, wy = related(rng, 64, 64, 32, 0.01)
        got = float(kernels.unbiased_cka(kernels.gram(jnp.asarray(wx)), kernels.gram(jnp.asarray(wy))))
    np.testing.assert_allclose(got, cka_u_reference(wx, wy), atol=2e-6)


def test_host_and_jitted_gram_paths_agree():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((3, 24, 40)).astype(np.float32)
    want = np.einsum("ldn,ldm->lnm", w.astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(kernels.gram_layers_host(w), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(kernels.gram_layers(jnp.asarray(w))), want, rtol=1e-5, atol=1e-4)


def test_device_column_cosine_accumulator_matches_float64():
    rng = np.random.default_rng(9)
    b = rng.standard_normal((2, 64, 10)).astype(np.float32)
    t = rng.standard_normal((2, 64, 6)).astype(np.float32)
    cross, sb, st = jnp.zeros((10, 6)), jnp.zeros(10), jnp.zeros(6)
    for i in range(2):
        cross, sb, st = kernels.column_cosine_accumulate(cross, sb, st, jnp.asarray(b[i]), jnp.asarray(t[i]))
    bb, tt = b.reshape(-1, 10).astype(np.float64), t.reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(np.asarray(cross), bb.T @ tt, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sb), (bb**2).sum(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(st), (tt**2).sum(0), rtol=1e-5)


def test_closed_form_equals_explicit_centering():
    rng = np.random.default_rng(10)
    wx, wy = related(rng, 40, 30, 20, 0.5)
    k = kernels.gram(jnp.asarray(wx))
    l = kernels.gram(jnp.asarray(wy))
    kc, lc = kernels.unbiased_center(k), kernels.unbiased_center(l)
    explicit = float(jnp.sum(kc * lc) / jnp.sqrt(jnp.sum(kc * kc) * jnp.sum(lc * lc)))
    np.testing.assert_allclose(float(kernels.unbiased_cka(k, l)), explicit, atol=1e-6)
    n = 40
    np.testing.assert_allclose(float(jnp.sum(kc * lc)) / (n * (n - 3)),
                               hsic_u(np.asarray(k, np.float64), np.asarray(l, np.float64)), rtol=1e-5)


def test_cka_from_precomputed_parts_equals_paired_cka():
    rng = np.random.default_rng(12)
    w = rng.standard_normal((2, 3, 12, 20)).astype(np.float32)
    k = kernels.gram_layers(jnp.asarray(w[0]))
    l = kernels.gram_layers(jnp.asarray(w[0] + 0.5 * w[1]))
    got = kernels.paired_cka_from_parts(k, kernels.hsic_parts_layers(k), l, kernels.hsic_parts_layers(l))
    np.testing.assert_allclose(np.asarray(got), np.asarray(kernels.paired_cka(k, l)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [8, 17, 64])
def test_upper_form_target_matches_float64_reference(n):
    """A target Gram given as its upper triangle (zeros below) scores as the whole Gram does,
    against the float64 formula, in every batched kernel (to float32 rounding: the sums are
    ordered differently)."""
    rng = np.random.default_rng(n)
    wx, wy = related(rng, n, 3 * n, 3 * n, 0.5)
    wz = rng.standard_normal((3 * n, n)).astype(np.float32)
    k = kernels.gram_layers(jnp.asarray(np.stack([wx, wz])))
    l = kernels.gram_layers(jnp.asarray(np.stack([wy, wz])))
    upper = jnp.triu(l)
    want = [cka_u_reference(wx, wy), 1.0]
    parts = kernels.hsic_parts_layers(upper, True)
    full_parts = kernels.hsic_parts_layers(l)
    for field in ("diag", "rows", "total", "self_term", "scale", "unit"):
        np.testing.assert_allclose(getattr(parts, field), getattr(full_parts, field), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(kernels.paired_cka(k, upper, True), want, atol=1e-5)
    np.testing.assert_allclose(kernels.paired_cka_from_parts(k, kernels.hsic_parts_layers(k), upper, parts, True),
                               want, atol=1e-5)
    grid = np.asarray(kernels.grid_cka(k, upper, True))
    np.testing.assert_allclose(grid, np.asarray(kernels.grid_cka(k, l)), atol=1e-5)
    np.testing.assert_allclose(np.diag(grid), want, atol=1e-5)


# -- range: CKA is scale invariant, and so must the float32 computation be ------------------------


def _cka(wx: np.ndarray, wy: np.ndarray) -> float:
    return float(kernels.unbiased_cka(kernels.gram(jnp.asarray(wx)), kernels.gram(jnp.asarray(wy))))


@settings(max_examples=40, deadline=None)
@given(px=st.integers(-100, 100), py=st.integers(-100, 100), seed=st.integers(0, 2**16))
def test_cka_is_exactly_invariant_to_power_of_two_scales(px, py, seed):
    """``W * 2^p`` is exact in float32 while no entry leaves the normal range: the score must not
    move a bit."""
    wx, wy = related(np.random.default_rng(seed), 24, 20, 12, 0.5)
    sx, sy = np.float32(2.0**px), np.float32(2.0**py)
    assume(np.array_equal(wx * sx / sx, wx) and np.array_equal(wy * sy / sy, wy))
    assert _cka(wx * sx, wy * sy) == _cka(wx, wy)
    np.testing.assert_allclose(_cka(wx * sx, wy * sy), cka_u_reference(wx, wy), rtol=0, atol=2e-6)


@settings(max_examples=25, deadline=None)
@given(log2c=st.floats(-110.0, 110.0), seed=st.integers(0, 2**16))
def test_cka_is_invariant_to_any_finite_scale(log2c, seed):
    """A scale that is not a power of two rounds W once (float32): the score stays within 2e-6 of
    the float64 score of the rounded weights, and of the unscaled ones."""
    wx, wy = related(np.random.default_rng(seed), 24, 20, 12, 0.5)
    scaled = (wx.astype(np.float64) * 2.0**log2c).astype(np.float32)
    np.testing.assert_allclose(_cka(scaled, wy), cka_u_reference(scaled, wy), rtol=0, atol=2e-6)
    np.testing.assert_allclose(_cka(scaled, wy), cka_u_reference(wx, wy), rtol=0, atol=2e-6)


@pytest.mark.parametrize("p", [-100, -60, -32, -30, 30, 32, 60, 100])
def test_grams_of_scaled_weights_stay_in_range_on_both_paths(p):
    """Host BLAS and jitted Grams of a projection scaled by 2^p: finite, the same on both paths,
    and exactly a power of two times the Gram of the unscaled projection."""
    w = np.random.default_rng(20).standard_normal((2, 16, 12)).astype(np.float32)
    scaled = w * np.float32(2.0**p)
    host = kernels.gram_layers_host(scaled)
    device = np.asarray(kernels.gram_layers(jnp.asarray(scaled)))
    np.testing.assert_array_equal(host, device)
    plain = kernels.gram_layers_host(w)
    for g, ref in zip(host, plain):
        assert np.isfinite(g).all() and np.abs(g).max() > 0
        ratio = g[ref != 0] / ref[ref != 0]
        assert np.all(ratio == ratio[0]) and np.frexp(ratio[0])[0] == 0.5  # one power of two


def test_ordinary_weights_are_used_as_stored():
    """Within the safe range no scaling happens: the Grams are bit for bit the plain products."""
    w = np.random.default_rng(21).standard_normal((3, 16, 12)).astype(np.float32)
    for scale in (2.0**-10, 1.0, 2.0**9):
        x = (w * scale).astype(np.float32)
        np.testing.assert_array_equal(kernels.gram_layers_host(x), np.matmul(x.transpose(0, 2, 1), x))
        got = np.asarray(kernels.gram_layers(jnp.asarray(x)))
        want = np.asarray(jax.jit(jax.vmap(lambda a: jnp.matmul(a.T, a, precision=kernels.HIGHEST)))(jnp.asarray(x)))
        np.testing.assert_array_equal(got, want)


def test_range_shift_rule():
    e = kernels.SAFE_EXPONENT
    inside = [0.0, 1.0, 2.0**e - 1, 2.0 ** (-e - 1), np.inf, np.nan]
    assert kernels.range_shift(np.array(inside)).tolist() == [0] * len(inside)
    assert kernels.range_shift(np.array([2.0**e, 2.0 ** (-e - 2), 3e38, 1e-45])).tolist() == [-e - 1, e + 1, -126, 126]
    for value in (2.0**30, 5.0**40, 2.0**-40, 1e-30):
        shifted = value * 2.0 ** int(kernels.range_shift(np.array(value)))
        assert 0.5 <= shifted < 1.0


@pytest.mark.parametrize("p", [-100, -40, 40, 100])
def test_hsic_parts_normalise_each_gram(p):
    """Grams themselves scaled by 2^p (as an old cache or another producer may hold them)."""
    rng = np.random.default_rng(22)
    wx, wy = related(rng, 20, 16, 10, 0.3)
    k, l = kernels.gram(jnp.asarray(wx)), kernels.gram(jnp.asarray(wy))
    big = k * np.float32(2.0**p)
    assert np.array_equal(np.asarray(big / np.float32(2.0**p)), np.asarray(k))  # exact: no denormal, no Inf
    parts = kernels.hsic_parts(big)
    assert 0.5 <= float(jnp.max(parts.diag)) < 1.0
    assert float(kernels.unbiased_cka(big, l)) == float(kernels.unbiased_cka(k, l))
    # The same batch shapes (XLA may round differently at different batch positions).
    paired = [float(kernels.paired_cka(g[None], l[None])[0]) for g in (big, k)]
    grid = [float(kernels.grid_cka(g[None], l[None])[0, 0]) for g in (big, k)]
    assert paired[0] == paired[1] and grid[0] == grid[1]
    np.testing.assert_allclose([*paired, *grid], cka_u_reference(wx, wy), rtol=0, atol=2e-6)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fewer_than_four_samples_is_refused(n):
    k = jnp.eye(n, dtype=jnp.float32)
    for f in (kernels.unbiased_cka, kernels.paired_cka):
        args = (k, k) if f is kernels.unbiased_cka else (k[None], k[None])
        with pytest.raises(ValueError, match="at least 4 samples"):
            f(*args)
    with pytest.raises(ValueError, match="at least 4 samples"):
        kernels.unbiased_center(k)


def test_column_cosine_accumulator_scales_rows():
    rng = np.random.default_rng(23)
    b = (rng.standard_normal((64, 10)) * 2.0**70).astype(np.float32)
    t = rng.standard_normal((64, 6)).astype(np.float32)
    zeros = (jnp.zeros((10, 6)), jnp.zeros(10), jnp.zeros(6))
    cross, sb, st_ = kernels.column_cosine_accumulate(*zeros, jnp.asarray(b), jnp.asarray(t), np.float32(2.0**-70),
                                                      np.float32(1.0))
    bb, tt = b.astype(np.float64) * 2.0**-70, t.astype(np.float64)
    np.testing.assert_allclose(np.asarray(cross), bb.T @ tt, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sb), (bb**2).sum(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(st_), (tt**2).sum(0), rtol=1e-5)


def test_row_scales_do_not_recompile_the_accumulator():
    rng = np.random.default_rng(24)
    b, t = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32), jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
    def accumulate(p):  # fresh sums each time: the accumulator donates them
        zeros = (jnp.zeros((6, 4)), jnp.zeros(6), jnp.zeros(4))
        kernels.column_cosine_accumulate(*zeros, b, t, np.float32(2.0**p), np.float32(1.0))[0].block_until_ready()

    accumulate(0)
    with count_compilations() as compiled:
        for p in (-70, 70):
            accumulate(p)
    assert compiled == [], "the row scales are traced arguments, not compile-time constants"


def test_aligned_cka_without_a_permutation_scores_the_grams_as_given():
    """``perm=None`` (Grams aligned already, as a scan's gathered ones) equals the identity
    permutation, and both equal the float64 formula."""
    rng = np.random.default_rng(31)
    n = 12
    w = rng.standard_normal((3, 30, n)).astype(np.float32)
    k = kernels.gram_layers(jnp.asarray(w))
    l = kernels.gram_layers(jnp.asarray(w + 0.8 * rng.standard_normal(w.shape).astype(np.float32)))
    u = jnp.triu(l)
    up = kernels.hsic_parts_layers(u, True)
    given = np.asarray(kernels.aligned_cka(k, None, None, u, up, (0, 1)))
    identity = np.asarray(kernels.aligned_cka(k, jnp.arange(n), jnp.ones(n), u, up, (0, 1)))
    np.testing.assert_array_equal(given, identity)
    want = [[hsic_u(np.asarray(k[i], np.float64), np.asarray(l[(i + s) % 3], np.float64))
             / np.sqrt(hsic_u(np.asarray(k[i], np.float64), np.asarray(k[i], np.float64))
                       * hsic_u(np.asarray(l[(i + s) % 3], np.float64), np.asarray(l[(i + s) % 3], np.float64)))
             for s in (0, 1)] for i in range(3)]
    np.testing.assert_allclose(given, want, atol=1e-5)
