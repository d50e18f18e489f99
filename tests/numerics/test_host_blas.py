"""bf16 host products (oneMKL on the matrix units, XLA's bf16 dot) against a float64 oracle and the float32 path.

Bound asserted everywhere: a bf16 x bf16 product is exact in float32, so the only error is the
float32 summation of ``k`` terms, which for any order is at most ``gamma_k <= k u`` times the
sum of magnitudes (``u = 2^-24``, Higham, Accuracy and Stability, eq. 3.5). Per entry:

    |C - C_exact| <= k u (|A|^T |B|) + k 2^-126 max(1, max|A|, max|B|)

(the last term covers bf16 subnormal inputs and products below float32's normal range, which
the matrix units flush to zero). Two routes each within that bound differ by at most twice it. A bf16 accumulator, a wrong
transpose or a wrong leading dimension all break it by orders of magnitude.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from awm_jax.errors import UsageError
from awm_jax.numerics import host_blas

BF16 = host_blas.BF16
U32 = 2.0**-24
TINY = 2.0**-126


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``C[i, j] = sum_r a[r, i] b[r, j]`` in float64 (exact for these sizes up to 2^-53)."""
    return np.einsum("ri,rj->ij", np.asarray(a, np.float64), np.asarray(b, np.float64))


def bound(a: np.ndarray, b: np.ndarray, routes: int = 1) -> np.ndarray:
    k = a.shape[0]
    a64, b64 = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    largest = max(1.0, a64.max(initial=0.0), b64.max(initial=0.0))
    return routes * (k * U32 * exact(a64, b64) + k * TINY * largest)


def float32_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The arithmetic the bf16 GEMM replaces: upcast, then numpy's float32 matmul."""
    return np.asarray(a).astype(np.float32).T @ np.asarray(b).astype(np.float32)


def assert_within(got: np.ndarray, want: np.ndarray, tol: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    excess = np.abs(got.astype(np.float64) - want) - tol
    assert np.all(excess <= 0), f"max excess over the bound {excess.max():.3e}"


@pytest.fixture
def route_cache():
    host_blas._load.cache_clear()
    yield
    host_blas._load.cache_clear()


@pytest.fixture
def mkl(monkeypatch):
    """The oneMKL route, forced (``auto`` takes it only with AMX), or the test is skipped."""
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "mkl")
    try:
        return host_blas.host_blas_route()
    except UsageError as e:
        pytest.skip(f"no bf16 matrix route: {e}")


@pytest.fixture(params=["mkl", "xla"])
def bf16_route(request, monkeypatch):
    """Each bf16 route, forced: oneMKL (skipped where it cannot run) and XLA's bf16 dot (for
    every size: the small products of these tests would otherwise take numpy's)."""
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, request.param)
    monkeypatch.setattr(host_blas, "XLA_MIN_MACS", 0)
    try:
        return host_blas.host_blas_route()
    except UsageError as e:
        pytest.skip(f"no bf16 matrix route: {e}")


def bf16(rng, shape, scale=1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(BF16)


def layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same values as ``x`` in the memory layouts a caller may pass."""
    big = np.zeros((2 * x.shape[0] + 1, 3 * x.shape[1] + 2), BF16)
    big[::2, 1::3][: x.shape[0], : x.shape[1]] = x
    padded = np.zeros((x.shape[0], x.shape[1] + 5), BF16)
    padded[:, 2 : 2 + x.shape[1]] = x
    return {
        "c": np.ascontiguousarray(x),
        "fortran": np.asfortranarray(x),
        "row_padded": padded[:, 2 : 2 + x.shape[1]],
        "reversed_rows": np.ascontiguousarray(x[::-1])[::-1],
        "both_strided": big[::2, 1::3][: x.shape[0], : x.shape[1]],
    }


GRAM_SHAPES = [(1, 1), (3, 5), (5, 3), (2, 64), (64, 48), (257, 129), (1024, 96)]
CROSS_SHAPES = [(1, 1, 1), (3, 5, 2), (100, 7, 13), (513, 64, 96)]


@pytest.mark.parametrize("shape", GRAM_SHAPES)
def test_gram_matches_float64_oracle_and_float32_path(bf16_route, shape):
    w = bf16(np.random.default_rng(sum(shape)), shape)
    got = host_blas.gram_bf16(w)
    assert_within(got, exact(w, w), bound(w, w))
    assert_within(got, float32_path(w, w).astype(np.float64), bound(w, w, routes=2))


@pytest.mark.parametrize("shape", CROSS_SHAPES)
def test_cross_matches_float64_oracle_and_float32_path(bf16_route, shape):
    rng = np.random.default_rng(sum(shape))
    r, n_b, n_t = shape
    a, b = bf16(rng, (r, n_b)), bf16(rng, (r, n_t), scale=0.02)
    got = host_blas.cross_bf16(a, b)
    assert_within(got, exact(a, b), bound(a, b))
    assert_within(got, float32_path(a, b).astype(np.float64), bound(a, b, routes=2))


@pytest.mark.parametrize("route", ["numpy", "xla"])
@pytest.mark.parametrize("shape", [(1, 1), (100, 7), (513, 96)])
def test_column_squares_match_float64(monkeypatch, route_cache, route, shape):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, route)
    monkeypatch.setattr(host_blas, "XLA_MIN_MACS", 0)  # every size takes the route
    x = bf16(np.random.default_rng(sum(shape)), shape)
    got = host_blas.column_squares(x)
    f = x.astype(np.float64)
    assert got.dtype == np.float32 and got.shape == (shape[1],)
    assert_within(got, (f * f).sum(axis=0), 2 * shape[0] * 2.0**-24 * (f * f).sum(axis=0))


@pytest.mark.parametrize("layout_a", ["c", "fortran", "row_padded", "reversed_rows", "both_strided"])
@pytest.mark.parametrize("layout_b", ["c", "fortran", "both_strided"])
def test_any_memory_layout_gives_the_same_product(bf16_route, layout_a, layout_b):
    rng = np.random.default_rng(7)
    a, b = bf16(rng, (75, 33)), bf16(rng, (75, 20))
    got = host_blas.cross_bf16(layouts(a)[layout_a], layouts(b)[layout_b])
    assert_within(got, exact(a, b), bound(a, b))
    gram = host_blas.gram_bf16(layouts(a)[layout_a])
    assert_within(gram, exact(a, a), bound(a, a))


def test_large_values_near_the_float32_limit_stay_within_the_bound(bf16_route):
    # Products up to ~1e36 and sums below float32's max (3.4e38): no overflow on either route.
    rng = np.random.default_rng(3)
    w = (np.sign(rng.standard_normal((40, 24))) * rng.uniform(0.5, 1.0, (40, 24)) * 1.5e17).astype(BF16)
    got = host_blas.gram_bf16(w)
    assert np.isfinite(got).all()
    assert_within(got, exact(w, w), bound(w, w))


def test_values_near_bf16_max_overflow_like_the_float32_path(bf16_route):
    big = float(ml_dtypes.finfo(BF16).max)
    w = np.array([[big, 1.0], [big, -1.0], [1.0, 2.0]], BF16)
    with np.errstate(over="ignore"):
        got, ref = host_blas.gram_bf16(w), float32_path(w, w)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    assert np.isinf(got[0, 0]) and got[0, 0] > 0
    np.testing.assert_allclose(got[1, 1], 6.0, rtol=0, atol=0)


def test_tiny_values_underflow_to_within_the_absolute_term(bf16_route):
    rng = np.random.default_rng(4)
    w = bf16(rng, (50, 9), scale=1e-20)  # products ~1e-40: below float32's normal range
    got = host_blas.gram_bf16(w)
    assert_within(got, exact(w, w), bound(w, w))


def test_subnormal_inputs_stay_within_the_flush_term(bf16_route):
    tiny = float(ml_dtypes.finfo(BF16).smallest_subnormal)
    a = np.array([[tiny, 1.0], [64 * tiny, -2.0], [3.0, 0.5]], BF16)
    b = np.array([[1e30, 1.0], [-1e30, 4.0], [1.0, 1.0]], BF16)
    got = host_blas.cross_bf16(a, b)
    assert_within(got, exact(a, b), bound(a, b))
    assert_within(got, float32_path(a, b).astype(np.float64), bound(a, b, routes=2))


def test_zeros_give_exact_zeros(bf16_route):
    assert not host_blas.gram_bf16(np.zeros((64, 32), BF16)).any()
    a = np.zeros((0, 5), BF16)
    np.testing.assert_array_equal(host_blas.cross_bf16(a, np.zeros((0, 3), BF16)), np.zeros((5, 3), np.float32))
    assert host_blas.gram_bf16(np.zeros((4, 0), BF16)).shape == (0, 0)
    assert host_blas.cross_bf16(np.zeros((4, 2), BF16), np.zeros((4, 0), BF16)).shape == (2, 0)


def test_cross_accumulates_into_out_in_place(bf16_route):
    rng = np.random.default_rng(5)
    a, b = bf16(rng, (300, 40)), bf16(rng, (300, 24))
    out = np.zeros((40, 24), np.float32)
    for start in range(0, 300, 128):  # blocks of rows, as embedding_cross walks the shared tokens
        result = host_blas.cross_bf16(a[start : start + 128], b[start : start + 128], out=out)
        assert result is out
    assert_within(out, exact(a, b), bound(a, b, routes=2))


def test_gram_layers_is_the_gram_of_each_layer(bf16_route):
    stack = bf16(np.random.default_rng(6), (3, 40, 16))
    got = host_blas.gram_layers_bf16(stack)
    assert got.shape == (3, 16, 16)
    for layer in range(3):
        np.testing.assert_array_equal(got[layer], host_blas.gram_bf16(stack[layer]))


def test_route_record_names_the_library(mkl):
    assert mkl.name == "mkl" and mkl.library and mkl.isa in ("amx_bf16", "avx512_bf16")
    assert mkl.threading in ("intel", "gnu", "sequential")


@pytest.mark.parametrize("route", ["auto", "numpy"])
def test_numpy_route_is_exactly_the_float32_path(monkeypatch, route, route_cache):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, route)
    if route == "auto":  # a CPU without bf16 instructions
        monkeypatch.setattr(host_blas, "_cpu_bf16_isa", lambda: None)
    assert not host_blas.bf16_gemm_available()
    rng = np.random.default_rng(8)
    a, b = bf16(rng, (65, 17)), bf16(rng, (65, 9))
    np.testing.assert_array_equal(host_blas.gram_bf16(a), float32_path(a, a))
    np.testing.assert_array_equal(host_blas.cross_bf16(a, b), float32_path(a, b))
    out = np.ones((17, 9), np.float32)
    np.testing.assert_array_equal(host_blas.cross_bf16(a, b, out=out), 1.0 + float32_path(a, b))


def test_cpu_without_bf16_instructions_falls_back(monkeypatch, route_cache):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "auto")
    monkeypatch.setattr(host_blas, "_cpu_bf16_isa", lambda: None)
    route = host_blas.host_blas_route()
    assert route.name == "numpy" and "amx_bf16" in route.reason
    w = bf16(np.random.default_rng(9), (20, 6))
    np.testing.assert_array_equal(host_blas.gram_bf16(w), float32_path(w, w))


def test_missing_library_files_fall_back_instead_of_ending_the_process(monkeypatch, route_cache, tmp_path):
    fake = tmp_path / "libmkl_rt.so.3"
    fake.write_bytes(b"")  # no libmkl_core beside it: oneMKL would exit() on its first call
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "auto")
    monkeypatch.setattr(host_blas, "_cpu_bf16_isa", lambda: "amx_bf16")
    monkeypatch.setattr(host_blas, "_find_mkl_rt", lambda: fake)
    route = host_blas.host_blas_route()
    assert route.name == "xla" and "missing" in route.reason  # XLA's bf16 dot instead


def test_auto_takes_xla_without_amx(monkeypatch, route_cache):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "auto")
    monkeypatch.setattr(host_blas, "_cpu_bf16_isa", lambda: "avx512_bf16")
    route = host_blas.host_blas_route()
    assert route.name == "xla" and "without AMX" in route.reason
    assert host_blas.bf16_gemm_available()


def test_small_products_on_the_xla_route_take_numpy(monkeypatch, route_cache):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "xla")
    monkeypatch.setattr(host_blas, "_xla_product", lambda *a, **k: pytest.fail("compiled XLA for a small product"))
    w = bf16(np.random.default_rng(12), (64, 32))
    np.testing.assert_array_equal(host_blas.gram_bf16(w), float32_path(w, w))
    np.testing.assert_array_equal(host_blas.gram_layers_bf16(w[None])[0], float32_path(w, w))


def test_forced_mkl_that_cannot_run_is_a_usage_error(monkeypatch, route_cache):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "mkl")
    monkeypatch.setattr(host_blas, "_find_mkl_rt", lambda: None)
    monkeypatch.setattr(host_blas, "_cpu_bf16_isa", lambda: "amx_bf16")
    with pytest.raises(UsageError, match="AWM_JAX_HOST_BLAS=mkl but oneMKL is not installed"):
        host_blas.gram_bf16(np.zeros((2, 2), BF16))


def test_unknown_switch_value_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(host_blas.HOST_BLAS_ENV, "openblas")
    with pytest.raises(UsageError, match="not one of auto, mkl, xla, numpy"):
        host_blas.host_blas_route()


def test_inputs_are_checked_not_converted():
    with pytest.raises(TypeError, match="must be bfloat16"):
        host_blas.gram_bf16(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError, match="matrix"):
        host_blas.gram_bf16(np.ones(3, BF16))
    with pytest.raises(ValueError, match="same rows"):
        host_blas.cross_bf16(np.ones((3, 2), BF16), np.ones((4, 2), BF16))
    with pytest.raises(ValueError, match="out must be"):
        host_blas.cross_bf16(np.ones((3, 2), BF16), np.ones((3, 2), BF16), out=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="stack"):
        host_blas.gram_layers_bf16(np.ones((3, 3), BF16))


def test_exact_bf16_converts_only_what_bf16_holds():
    rng = np.random.default_rng(10)
    w16 = bf16(rng, (7, 5, 3))
    w32 = w16.astype(np.float32)
    got = host_blas.exact_bf16(w32)
    assert got.dtype == BF16 and got.shape == w32.shape
    np.testing.assert_array_equal(got.astype(np.float32), w32)
    np.testing.assert_array_equal(host_blas.exact_bf16(np.asfortranarray(w32[0])).astype(np.float32), w32[0])
    special = np.array([0.0, -0.0, np.inf, -np.inf, float(ml_dtypes.finfo(BF16).max)], np.float32)
    np.testing.assert_array_equal(host_blas.exact_bf16(special).astype(np.float32), special)
    off = w32.copy()
    off[3, 2, 1] = np.nextafter(off[3, 2, 1], np.float32(np.inf))  # one float32 ulp off the bf16 grid
    assert host_blas.exact_bf16(off) is None
    assert host_blas.exact_bf16(w32.astype(np.float16)) is None
    assert host_blas.exact_bf16(w16) is w16


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_import_loads_no_library():
    code = ("import awm_jax.numerics.host_blas; "
            "print(any('libmkl' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_peak_magnitudes_are_the_largest_magnitudes(dtype):
    x = bf16(np.random.default_rng(4), (3, 5, 7)).astype(host_blas.BF16 if dtype == "bfloat16" else np.float16)
    x[1, 2, 3] = -1e30 if dtype == "bfloat16" else -6e4
    x[2] = 0
    x[0, 0, 0] = -np.inf
    for view in (x, x[:, ::2]):  # a strided view too
        np.testing.assert_array_equal(host_blas.peak_magnitudes(view), np.abs(view.astype(np.float64)).max(axis=(1, 2)))
    with pytest.raises(TypeError):
        host_blas.peak_magnitudes(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("scale", [1.0, 2.0**20])  # 2^20: outside the safe range, shifted on the float32 path
def test_bf16_stacks_give_the_grams_of_their_float32_values(bf16_route, scale):
    from awm_jax.numerics.kernels import gram_layers_host

    w = bf16(np.random.default_rng(6), (3, 40, 24), scale)
    np.testing.assert_array_equal(gram_layers_host(w), gram_layers_host(w.astype(np.float32)))
