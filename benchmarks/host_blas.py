"""Host matmul routes for bf16 weights: GFLOP/s of each, and what a 7B fingerprint and cosine take.

    python -m benchmarks.host_blas [--repeats 3] [--quick] [--dnnl PATH/libdnnl.so.3] [--out DIR]

Cases (bf16 inputs, float32 results):
  gram-4096x4096: ``K = W^T W`` of a ``[4096, 4096]`` projection (a 7B Q or K);
  gram-1024x4096: of a ``[1024, 4096]`` projection (a grouped-query K, e.g. Llama-3-8B);
  cross-32000x2048: ``E_b^T E_t`` of two ``[32000, 2048]`` embeddings (a TinyLlama pair's cosine).
Routes:
  numpy_f32: numpy's float32 matmul on inputs already upcast (today's host path; numpy computes
    ``W^T W`` as a symmetric rank-k update, half the flops of a GEMM);
  mkl_bf16: ``awm_jax.numerics.host_blas`` (oneMKL ``cblas_gemm_bf16bf16f32``, AMX-BF16);
  mkl_bf16_from_f32: the same from float32 copies, narrowed with ``host_blas.exact_bf16``
    inside the timing (what a caller that holds float32 stacks pays);
  xla_bf16: ``jax.lax.dot_general`` of the bf16 arrays with ``preferred_element_type=float32``
    as laid out (contracting the leading axis), timed on the device with ``block_until_ready``;
  xla_bf16_nt: the same product from the host-transposed ``[n, d]`` arrays (contracting the
    minor axis, which XLA:CPU hands to its bf16 YNNPACK fusion);
  onednn_bf16 (with ``--dnnl``): oneDNN's ``dnnl_gemm_bf16bf16f32`` from the given library.
GFLOP/s are effective: ``2 r p q / t`` for an ``[r, p]^T [r, q]`` product, whatever the route
does inside. Each route is checked against numpy's float32 result (relative Frobenius difference
below 1e-5) before timing; after one warm-up per route the repeats run round-robin over the
routes so that load from other work on the machine falls on all of them alike; min and median
are reported with the load average before and after. oneMKL is timed wherever it can run, and the
record names the route ``auto`` takes on the machine. The JSON goes to
``benchmarks/results/host-blas-CPU.json`` (CPU: the model name, e.g. ``amd-epyc``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import ml_dtypes
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BF16 = np.dtype(ml_dtypes.bfloat16)
CPU_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")
# A 7B-shaped (Llama-2-7B) model: 32 layers x (Q, K) Grams of [4096, 4096]; the pair cosine
# E_b^T E_t over 32000 shared rows of 4096 columns.
SEVEN_B = {"grams_per_model": 64, "gram_case": "gram-4096x4096", "cosine_flops": 2 * 32000 * 4096 * 4096}


def cpu_record() -> dict:
    flags: list[str] = []
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "bf16_flags": [f for f in CPU_FLAGS if f in flags]}


def machine_tag() -> str:
    """The CPU model as a file-name part (``amd-epyc``, ``intel-r-xeon-r-processor``)."""
    return re.sub(r"[^a-z0-9]+", "-", cpu_record()["model"].lower()).strip("-") or "cpu"


def cases(quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named ``(a, b)`` bf16 pairs; ``a is b`` for a Gram. ``quick`` shrinks every side 4x."""
    rng = np.random.default_rng(0)
    s = 4 if quick else 1

    def draw(rows, cols):
        return (0.02 * rng.standard_normal((rows // s, cols // s), np.float32)).astype(BF16)

    w, wk = draw(4096, 4096), draw(1024, 4096)
    return {"gram-4096x4096": (w, w), "gram-1024x4096": (wk, wk),
            "cross-32000x2048": (draw(32000, 2048), draw(32000, 2048))}


def mkl_usable() -> bool:
    """Whether oneMKL's bf16 GEMM can run here (forced: ``auto`` takes it only with AMX); the
    benchmark then times it under ``AWM_JAX_HOST_BLAS=mkl``."""
    from awm_jax.errors import UsageError
    from awm_jax.numerics import host_blas

    auto = os.environ.get(host_blas.HOST_BLAS_ENV)
    os.environ[host_blas.HOST_BLAS_ENV] = "mkl"
    try:
        return host_blas.bf16_gemm_available()
    except UsageError:
        if auto is None:
            del os.environ[host_blas.HOST_BLAS_ENV]
        else:
            os.environ[host_blas.HOST_BLAS_ENV] = auto
        return False


def routes(dnnl: str | None) -> dict:
    """Route name -> ``prepare(a, b)`` returning a no-argument callable that computes ``a^T b``
    (or None where the route does not apply to that case)."""
    import jax
    import jax.numpy as jnp

    from awm_jax.numerics import host_blas

    def numpy_f32(a, b):
        a32 = a.astype(np.float32)
        b32 = a32 if b is a else b.astype(np.float32)
        return lambda: a32.T @ b32

    def mkl_bf16(a, b):
        return lambda: host_blas.cross_bf16(a, b) if b is not a else host_blas.gram_bf16(a)

    def mkl_bf16_blocks(a, b):  # embedding_cross's walk: blocks of 8192 shared rows into one accumulator
        if b is a:
            return None
        out = np.empty((a.shape[1], b.shape[1]), np.float32)

        def call():
            out[...] = 0.0
            for start in range(0, a.shape[0], 8192):
                host_blas.cross_bf16(a[start : start + 8192], b[start : start + 8192], out=out)
            return out
        return call

    def mkl_bf16_from_f32(a, b):  # float32 stacks from the reader, narrowed back first
        a32 = a.astype(np.float32)
        b32 = a32 if b is a else b.astype(np.float32)

        def call():
            a16 = host_blas.exact_bf16(a32)
            return host_blas.gram_bf16(a16) if b is a else host_blas.cross_bf16(a16, host_blas.exact_bf16(b32))
        return call

    tn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32))
    nt = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32))

    def xla(fn, transpose):
        def prepare(a, b):
            da = jnp.asarray(np.ascontiguousarray(a.T) if transpose else a)
            db = da if b is a else jnp.asarray(np.ascontiguousarray(b.T) if transpose else b)
            return lambda: fn(da, db).block_until_ready()
        return prepare

    found = {"numpy_f32": numpy_f32, "xla_bf16": xla(tn, False), "xla_bf16_nt": xla(nt, True)}
    if mkl_usable():
        found["mkl_bf16"] = mkl_bf16
        found["mkl_bf16_from_f32"] = mkl_bf16_from_f32
        found["mkl_bf16_blocks"] = mkl_bf16_blocks
    if dnnl:
        lib = ctypes.CDLL(dnnl)
        gemm = lib.dnnl_gemm_bf16bf16f32  # row-major, char transposes, int64 sizes
        i64 = ctypes.c_int64
        gemm.argtypes = [ctypes.c_char, ctypes.c_char, i64, i64, i64, ctypes.c_float, ctypes.c_void_p, i64,
                         ctypes.c_void_p, i64, ctypes.c_float, ctypes.c_void_p, i64]

        def onednn(a, b):
            (r, p), q = a.shape, b.shape[1]
            c = np.empty((p, q), np.float32)

            def call():
                status = gemm(b"T", b"N", p, q, r, 1.0, a.ctypes.data, p, b.ctypes.data, q, 0.0, c.ctypes.data, q)
                if status != 0:
                    raise SystemExit(f"dnnl_gemm_bf16bf16f32 returned status {status}")
                return c
            return call
        found["onednn_bf16"] = onednn
    return found


def dnnl_version(path: str) -> str:
    """``"oneDNN X.Y.Z"`` of the library at ``path`` (``dnnl_version()``)."""

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                    ("hash", ctypes.c_char_p)]

    lib = ctypes.CDLL(path)
    lib.dnnl_version.restype = ctypes.POINTER(Version)
    v = lib.dnnl_version().contents
    return f"oneDNN {v.major}.{v.minor}.{v.patch} ({v.hash.decode()[:12]})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_blas", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="every side 4x smaller (a smoke run, not for the record)")
    p.add_argument("--dnnl", help="path of a libdnnl.so to time oneDNN's bf16 GEMM as well")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    from awm_jax.numerics import host_blas

    load_before = os.getloadavg()
    todo = routes(args.dnnl)
    results = {}
    for case, (a, b) in cases(args.quick).items():
        flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        calls = {name: call for name, prepare in todo.items() if (call := prepare(a, b)) is not None}
        want = np.asarray(calls["numpy_f32"]())
        norm = np.linalg.norm(want)
        check = {}
        for name, call in calls.items():  # correctness first; doubles as the warm-up
            got = np.asarray(call())
            check[name] = float(np.linalg.norm(got - want) / norm)
            if not check[name] < 1e-5:
                raise SystemExit(f"{case}: {name} differs from numpy's float32 result by {check[name]:.2e}")
        times = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
        results[case] = {
            "shape": {"rows": a.shape[0], "a_cols": a.shape[1], "b_cols": b.shape[1]}, "flops": flops,
            "routes": {name: {"min_s": min(ts), "median_s": statistics.median(ts), "times_s": ts,
                              "gflops_best": flops / min(ts) / 1e9,
                              "gflops_median": flops / statistics.median(ts) / 1e9,
                              "rel_diff_vs_numpy_f32": check[name]} for name, ts in times.items()},
        }
        line = ", ".join(f"{n} {r['gflops_best']:.0f}" for n, r in results[case]["routes"].items())
        print(f"[{case}] GFLOP/s (best of {args.repeats}): {line}; load {os.getloadavg()[0]:.1f}", flush=True)

    estimates = {}
    if not args.quick:
        gram = results[SEVEN_B["gram_case"]]["routes"]
        cross = results["cross-32000x2048"]["routes"]
        for name in {**gram, **cross}:
            grams_s = SEVEN_B["grams_per_model"] * gram[name]["min_s"] if name in gram else None
            cosine_s = SEVEN_B["cosine_flops"] / (cross[name]["gflops_best"] * 1e9) if name in cross else None
            estimates[name] = {"fingerprint_7b_grams_s": grams_s, "pair_cosine_7b_s": cosine_s}
            print(f"[7B] {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in estimates[name].items() if v is not None))
    os.environ.pop(host_blas.HOST_BLAS_ENV, None)
    route = host_blas.host_blas_route()  # what ``auto`` takes on this machine
    record = {
        "machine": cpu_record(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "threads": {k: os.environ.get(k) for k in ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "host_blas_route": route.__dict__, "onednn": dnnl_version(args.dnnl) if args.dnnl else None,
        "numpy": np.__version__, "repeats": args.repeats, "quick": args.quick,
        "cases": results,
        "estimates_7b": {"note": "fingerprint: 64 Grams of [4096, 4096] at the measured time each; cosine: "
                                 "2 x 32000 x 4096^2 flops at the cross-32000x2048 rate", "routes": estimates},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"host-blas-{machine_tag()}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
