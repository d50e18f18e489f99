"""bf16 x bf16 -> float32 matrix products on the host CPU: oneMKL, XLA's bf16 dot or numpy.

The two big host matmuls of the method take bf16 weights: the per-layer Gram ``K = W^T W`` and
the embedding-column cross product ``E_b^T E_t`` over the shared rows. The product of two bf16
numbers is exact in float32, so a GEMM that reads bf16 and accumulates in float32 returns the
numbers of the float32 path (``a.astype(float32).T @ b.astype(float32)``) up to the order of
the float32 summation. Three routes compute them:

* ``mkl``: oneMKL's ``cblas_gemm_bf16bf16f32`` called through ``ctypes`` from ``libmkl_rt`` (the
  ``mkl`` wheel, installed by ``pip install 'awm_jax[amx]'``), loaded on first use, never at
  import. On AMX-BF16 (Sapphire Rapids and later) it runs at two to three times the float32
  sgemm's rate.
* ``xla``: XLA:CPU's own bf16 dot (``dot_general`` with float32 accumulation), the operands first
  transposed in a compiled call of their own so that the contraction is their minor axis (the
  layout XLA hands to its bf16 matrix kernels; inside one program it folds the transpose away
  and picks a kernel half as fast). Products under ``XLA_MIN_MACS`` take numpy's matmul (a new
  shape costs a compilation).
* ``numpy``: numpy's float32 matmul of upcast copies (the arithmetic of the path it replaces).

``python -m benchmarks.host_blas`` measures them. On the 2-core Xeon VM with AMX, under load,
oneMKL ran at 257-273 GFLOP/s, XLA at 77-183 and numpy at 46-84. On a 2-core AMD EPYC VM with
AVX512-BF16 and no AMX, XLA ran at 661-818, numpy at 185-364 and oneMKL at 189-198
(``benchmarks/results/host-blas-*.json``). ``auto`` therefore takes oneMKL on AMX when it is
installed, XLA on other CPUs with bf16 instructions, and numpy elsewhere. Callers need no
branch of their own: every function here computes the same product on every route, and
:func:`bf16_gemm_available` says whether bf16 inputs are worth keeping.

Environment:
  ``AWM_JAX_HOST_BLAS``: ``auto`` (default, as above), ``mkl`` (oneMKL on AMX-BF16 or
  AVX512-BF16, or a :class:`~awm_jax.errors.UsageError` saying why not), ``xla`` or ``numpy``.
  Read on every call, so a test or a benchmark can switch it. oneMKL's own variables
  (``MKL_NUM_THREADS``, ``MKL_VERBOSE``) apply as usual.

Numerics: the matrix units treat bf16 subnormal inputs (``|x| < 2^-126``) and float32-subnormal
products as zero (``TDPBF16PS``/``VDPBF16PS`` ignore MXCSR), so a flushed term changes an entry by
less than ``2^-126 max(1, |other factor|)``. Every other term is exact, and the entries agree
with the float32 path within float32 summation error (the tests assert
``|C - C_exact| <= k u (|A|^T |B|) + k 2^-126 max(1, max|A|, max|B|)``, ``u = 2^-24``, against
a float64 oracle). Weights of a real checkpoint are far from that range; a matrix scaled into it
(``|w| < 1e-19``) has Gram entries below float32's normal range on the float32 path as well.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from awm_jax.errors import UsageError

__all__ = [
    "BF16",
    "HOST_BLAS_ENV",
    "BlasRoute",
    "host_blas_route",
    "bf16_gemm_available",
    "gram_bf16",
    "gram_layers_bf16",
    "cross_bf16",
    "column_squares",
    "peak_magnitudes",
    "exact_bf16",
]

#: Environment variable choosing the route: ``auto`` (default), ``mkl``, ``xla`` or ``numpy``.
HOST_BLAS_ENV = "AWM_JAX_HOST_BLAS"

#: Products smaller than this many multiply-adds take numpy's float32 matmul on the ``xla`` route:
#: each new shape costs XLA a compilation (~0.1 s), more than such a product takes.
XLA_MIN_MACS = 1 << 30

#: The bfloat16 numpy dtype these functions take.
BF16 = np.dtype(ml_dtypes.bfloat16)
_CHOICES = ("auto", "mkl", "xla", "numpy")
# CBLAS enums.
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# MKL_Set_Threading_Layer codes.
_LAYERS = {"intel": 0, "sequential": 1, "gnu": 3}


@dataclasses.dataclass(frozen=True)
class BlasRoute:
    """Which implementation computes the bf16 products, and why.

    Attributes:
      name: ``"mkl"`` (oneMKL's bf16 GEMM on the matrix units), ``"xla"`` (XLA:CPU's bf16 dot,
        float32 accumulation) or ``"numpy"`` (float32 matmul).
      reason: one line saying why this route was chosen (for logs and benchmark records).
      library: path of the loaded ``libmkl_rt``, or None.
      version: oneMKL's version string, or None.
      threading: oneMKL threading layer (``"intel"``, ``"gnu"`` or ``"sequential"``), or None.
      isa: the CPU's bf16 instructions oneMKL uses (``"amx_bf16"`` or ``"avx512_bf16"``), or None.
      threads: oneMKL's thread count when loaded (``MKL_NUM_THREADS``, else the physical cores).
    """

    name: str
    reason: str
    library: str | None = None
    version: str | None = None
    threading: str | None = None
    isa: str | None = None
    threads: int | None = None


class _Mkl:
    """The loaded library and its bf16 GEMM entry point (ILP64 when exported, else LP64)."""

    def __init__(self, rt: ctypes.CDLL, gemm, index_type):
        self.rt, self.gemm, self.index_type = rt, gemm, index_type
        self.index_max = np.iinfo(np.int64 if index_type is ctypes.c_int64 else np.int32).max


def _choice() -> str:
    value = os.environ.get(HOST_BLAS_ENV, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise UsageError(f"{HOST_BLAS_ENV}={value!r} is not one of {', '.join(_CHOICES)}; unset it or pick one")
    return value


def _cpu_bf16_isa() -> str | None:
    """``"amx_bf16"`` / ``"avx512_bf16"`` when the CPU (and kernel) expose them, else None."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    if "amx_bf16" in flags and "amx_tile" in flags:
        return "amx_bf16"
    return "avx512_bf16" if "avx512_bf16" in flags else None


def _find_mkl_rt() -> Path | None:
    """``libmkl_rt`` from the ``mkl`` distribution's file list, else beside the interpreter."""
    candidates = []
    try:
        dist = importlib.metadata.distribution("mkl")
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.startswith("libmkl_rt.so")]
    except importlib.metadata.PackageNotFoundError:
        pass
    for prefix in (sys.prefix, sys.base_prefix):
        candidates += [Path(prefix, "lib", f"libmkl_rt.so.{v}") for v in (3, 2)]
    return next((p.resolve() for p in candidates if p.is_file()), None)


def _load_threading(libdir: Path, suffix: str) -> str:
    """Picks the first threading layer whose files are all there and whose OpenMP runtime loads.

    oneMKL dlopens its core, interface, threading and CPU-kernel libraries on its first call and
    ends the process when one is missing, so their presence is checked here first (they cannot
    be preloaded one by one: each needs symbols of the others).
    """
    needed = [f"libmkl_core{suffix}", f"libmkl_intel_lp64{suffix}", f"libmkl_intel_ilp64{suffix}",
              f"libmkl_avx512{suffix}"]
    missing = [name for name in needed if not (libdir / name).is_file()]
    if missing:
        raise OSError(f"{', '.join(missing)} missing beside libmkl_rt in {libdir}")
    attempts = (("intel", "libiomp5.so", "libmkl_intel_thread"), ("gnu", "libgomp.so.1", "libmkl_gnu_thread"),
                ("sequential", None, "libmkl_sequential"))
    for layer, runtime, thread_lib in attempts:
        if not (libdir / f"{thread_lib}{suffix}").is_file():
            continue
        try:
            if runtime is not None:
                local = libdir / runtime
                ctypes.CDLL(str(local) if local.is_file() else runtime, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return layer
    raise OSError(f"no oneMKL threading layer is usable in {libdir}")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[_Mkl | None, BlasRoute]:
    """Loads oneMKL once per process and checks it on a small product."""
    isa = _cpu_bf16_isa()
    if isa is None:
        return None, BlasRoute("numpy", "the CPU reports neither amx_bf16 nor avx512_bf16")
    path = _find_mkl_rt()
    if path is None:
        return None, BlasRoute("numpy", "oneMKL is not installed (pip install 'awm_jax[amx]')")
    suffix = path.name[len("libmkl_rt"):]
    try:
        threading = _load_threading(path.parent, suffix)
        rt = ctypes.CDLL(str(path))  # local: its BLAS symbols stay out of the global namespace
        rt.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        rt.MKL_Set_Threading_Layer(_LAYERS[threading])
        ilp64 = hasattr(rt, "cblas_gemm_bf16bf16f32_64")
        gemm = rt.cblas_gemm_bf16bf16f32_64 if ilp64 else rt.cblas_gemm_bf16bf16f32
    except (OSError, AttributeError) as exc:
        return None, BlasRoute("numpy", f"oneMKL at {path} is unusable: {exc}")
    index = ctypes.c_int64 if ilp64 else ctypes.c_int32
    gemm.argtypes = [ctypes.c_int] * 3 + [index] * 3 + [ctypes.c_float, ctypes.c_void_p, index,
                                                        ctypes.c_void_p, index, ctypes.c_float, ctypes.c_void_p, index]
    gemm.restype = None
    mkl = _Mkl(rt, gemm, index)
    buf = ctypes.create_string_buffer(256)
    rt.MKL_Get_Version_String(buf, len(buf))
    route = BlasRoute("mkl", f"oneMKL bf16 GEMM on {isa}", str(path), buf.value.decode(errors="replace").strip(),
                      threading, isa, int(rt.MKL_Get_Max_Threads()))
    a = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    got = _mkl_product(mkl, a.astype(BF16), a.astype(BF16), None)
    if not np.array_equal(got, a.T @ a):
        return None, BlasRoute("numpy", f"oneMKL at {path} failed its self-check (got {got.tolist()})")
    return mkl, route


def host_blas_route() -> BlasRoute:
    """The route the functions below take now (loads oneMKL on the first call).

    Raises:
      UsageError: ``AWM_JAX_HOST_BLAS`` is not a known value, or is ``mkl`` and oneMKL cannot run.
    """
    choice = _choice()
    if choice == "numpy":
        return BlasRoute("numpy", f"{HOST_BLAS_ENV}=numpy")
    if choice == "xla":
        return BlasRoute("xla", f"{HOST_BLAS_ENV}=xla")
    isa = _cpu_bf16_isa() if choice == "auto" else None
    if choice == "auto" and isa == "avx512_bf16":
        return BlasRoute("xla", "avx512_bf16 without AMX: XLA's bf16 dot is 2-3x numpy's float32 and oneMKL's bf16 "
                                "GEMM here", isa=isa)
    route = _load()[1]
    if choice == "auto" and isa == "amx_bf16" and route.name != "mkl":
        return BlasRoute("xla", f"AMX without oneMKL ({route.reason}): XLA's bf16 dot", isa=isa)
    if choice == "mkl" and route.name != "mkl":
        raise UsageError(f"{HOST_BLAS_ENV}=mkl but {route.reason}; unset {HOST_BLAS_ENV} to use numpy")
    return route


def bf16_gemm_available() -> bool:
    """True when the products below take bf16 inputs (oneMKL or XLA's bf16 dot), not float32 copies."""
    return host_blas_route().name in ("mkl", "xla")


def _row_major(x: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """``(view, ld, transposed)``: ``view`` is ``x`` (or ``x.T`` when ``transposed``) laid out
    row-major with leading dimension ``ld`` elements, read in place; other layouts are copied."""
    (rows, cols), (s0, s1), item = x.shape, x.strides, x.itemsize
    if (cols <= 1 or s1 == item) and (rows <= 1 or (s0 % item == 0 and s0 >= cols * item)):
        return x, (s0 // item if rows > 1 else max(1, cols)), False
    if (rows <= 1 or s0 == item) and (cols <= 1 or (s1 % item == 0 and s1 >= rows * item)):
        return x.T, (s1 // item if cols > 1 else max(1, rows)), True
    x = np.ascontiguousarray(x)
    return x, max(1, cols), False


def _mkl_product(mkl: _Mkl, a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``a^T b`` (+ ``out``) with oneMKL; ``a`` [r, p], ``b`` [r, q] bf16 -> [p, q] float32."""
    (r, p), q = a.shape, b.shape[1]
    beta = 0.0 if out is None else 1.0
    c = np.empty((p, q), np.float32) if out is None else out
    if p == 0 or q == 0:
        return c
    if r == 0:
        if out is None:
            c[...] = 0.0
        return c
    a_view, lda, a_flipped = _row_major(a)  # the GEMM reads a^T: transpose a row-major a
    b_view, ldb, b_flipped = _row_major(b)
    trans_a = _NO_TRANS if a_flipped else _TRANS
    trans_b = _TRANS if b_flipped else _NO_TRANS
    if max(r, p, q, lda, ldb) > mkl.index_max:
        raise ValueError(f"matrix dimensions {a.shape} x {b.shape} exceed oneMKL's 32-bit index range")
    mkl.gemm(_ROW_MAJOR, trans_a, trans_b, p, q, r, 1.0, a_view.ctypes.data, lda, b_view.ctypes.data, ldb,
             beta, c.ctypes.data, q)
    return c


def _check(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != BF16:
        raise TypeError(f"{name} must be bfloat16 (ml_dtypes.bfloat16), got {x.dtype}: converting would round it")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix [rows, columns], got shape {x.shape}")
    return x


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is not None and (out.dtype != np.float32 or out.shape != (a.shape[1], b.shape[1])
                            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 [{a.shape[1]}, {b.shape[1]}] array, "
                         f"got {out.dtype} {out.shape}")
    route = host_blas_route().name
    if route == "mkl":
        return _mkl_product(_load()[0], a, b, out)
    if route == "xla" and a.shape[0] * a.shape[1] * b.shape[1] >= XLA_MIN_MACS:
        product = _xla_product(a, b, copy=out is None)
    else:  # two operands even for a Gram: numpy computes ``x.T @ x`` of one array with SYRK, whose
        # rounding differs from the GEMM of the float32 path (and changes between numpy releases)
        product = a.astype(np.float32).T @ b.astype(np.float32)
    if out is None:
        return product
    out += product
    return out


@functools.lru_cache(maxsize=1)
def _xla_kernels():
    """The CPU device, a jitted transpose and the jitted ``x y^T`` of two bf16 ``[p, r]``,
    ``[q, r]`` arrays in float32, contracting the minor axis: the layout XLA:CPU hands to its
    bf16 matrix kernels. The transpose is its own compiled call: inside the dot's program XLA
    folds it into the dot's layout and picks a kernel 2x slower."""
    import jax
    import jax.numpy as jnp

    dims = (((1,), (1,)), ((), ()))
    return (jax.devices("cpu")[0], jax.jit(jnp.transpose),
            jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)))


def _xla_product(a: np.ndarray, b: np.ndarray, copy: bool = True) -> np.ndarray:
    """``a^T b`` through XLA:CPU's bf16 dot: a new writable float32 array, or (``copy=False``) a
    read-only view of XLA's result."""
    import jax

    cpu, transpose, dot = _xla_kernels()
    at = transpose(jax.device_put(a, cpu))
    bt = at if b is a else transpose(jax.device_put(b, cpu))
    return (np.array if copy else np.asarray)(dot(at, bt))


def gram_bf16(w: np.ndarray) -> np.ndarray:
    """Sample Gram ``K = W^T W`` of one bf16 projection, accumulated in float32.

    Args:
      w: ``[d, n]`` bfloat16 projection (Linear layout); any strides (a row-major or
        column-major view is read in place, anything else is copied once).

    Returns:
      ``[n, n]`` float32 ``K`` (a new C-contiguous array).

    Raises:
      TypeError: ``w`` is not bfloat16 (convert nothing silently: float16/float32 weights go
        through the float32 path instead).
    """
    w = _check("w", w)
    return _product(w, w, None)


def gram_layers_bf16(w: np.ndarray) -> np.ndarray:
    """Grams of a stack of bf16 projections: ``[L, d, n] -> [L, n, n]`` float32, layer by layer."""
    w = np.asarray(w)
    if w.ndim != 3:
        raise ValueError(f"w must be a stack [layers, d, n], got shape {w.shape}")
    out = np.zeros((w.shape[0], w.shape[2], w.shape[2]), np.float32)
    for i in range(w.shape[0]):  # each Gram added into its zeroed layer: no intermediate copy
        layer = _check("w", w[i])
        _product(layer, layer, out[i])
    return out


def cross_bf16(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Column cross product ``a^T b`` of two bf16 matrices over shared rows, in float32.

    Args:
      a: ``[r, n_b]`` bfloat16 (e.g. the base embedding's shared rows).
      b: ``[r, n_t]`` bfloat16 (the target embedding's rows for the same tokens, same order).
      out: optional ``[n_b, n_t]`` C-contiguous float32 accumulator; the product is added to it
        in place (GEMM with ``beta = 1``) and it is returned, so blocks of rows accumulate
        without a temporary.

    Returns:
      ``[n_b, n_t]`` float32 ``a^T b`` (plus ``out``'s previous contents when given).
    """
    a, b = _check("a", a), _check("b", b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same rows, got {a.shape} and {b.shape}")
    return _product(a, b, out)


@functools.lru_cache(maxsize=1)
def _xla_column_squares():
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)), axis=0))


def column_squares(x: np.ndarray) -> np.ndarray:
    """Float32 sums of squares of the columns of a bf16 matrix (the squared column norms).

    On the ``xla`` route, for a matrix whose own cross product takes XLA (``r p^2`` at least
    ``XLA_MIN_MACS``), one compiled pass over the bf16 values (squares exact in float32), no
    upcast copy; otherwise the float32 sums of an upcast copy.

    Args:
      x: ``[r, p]`` bfloat16.

    Returns:
      ``[p]`` float32.
    """
    x = _check("x", x)
    if host_blas_route().name == "xla" and x.size * x.shape[1] >= XLA_MIN_MACS:
        import jax

        return np.array(_xla_column_squares()(jax.device_put(x, _xla_kernels()[0])))
    f = x.astype(np.float32)
    return np.einsum("ij,ij->j", f, f)


#: 16-bit float types whose sign-cleared bits order as their magnitudes do (Inf and NaN above
#: every finite value).
HALF_FLOATS = (BF16, np.dtype(np.float16))


def peak_magnitudes(x: np.ndarray) -> np.ndarray:
    """The largest magnitude of each leading slice of a bf16 or float16 array (``[L, ...] -> [L]``
    float64): an integer maximum of the sign-cleared bits, no float copy (~20x numpy's bf16 max)."""
    x = np.asarray(x)
    if x.dtype not in HALF_FLOATS or x.ndim < 1:
        raise TypeError(f"expected a bfloat16 or float16 array with a leading axis, got {x.dtype} {x.shape}")
    bits = np.bitwise_and(np.ascontiguousarray(x).view(np.uint16), np.uint16(0x7FFF))
    peaks = bits.reshape(x.shape[0], -1).max(axis=1) if x.size else np.zeros(x.shape[0], np.uint16)
    return peaks.view(x.dtype).astype(np.float64)


def exact_bf16(x: np.ndarray) -> np.ndarray | None:
    """``x`` as bfloat16 when that loses nothing (every float32 value is a bf16 value, as in
    weights read from a bf16 checkpoint and upcast), else None.

    Args:
      x: float32 array of any shape (a bfloat16 array is returned as it is).

    Returns:
      A new C-contiguous bfloat16 array of ``x``'s shape, or None when some element has low
      mantissa bits set (float16/float32 weights), when ``x`` is another dtype, or on a
      big-endian host.
    """
    x = np.asarray(x)
    if x.dtype == BF16:
        return x
    if x.dtype != np.float32 or sys.byteorder != "little":
        return None
    halves = np.ascontiguousarray(x).view(np.uint16).reshape(x.shape + (2,))
    if halves[..., 0].any():  # the low 16 bits of each float32: zero exactly when bf16 holds it
        return None
    return halves[..., 1].copy().view(BF16)
