"""Pair benchmark: cold and warm comparisons of synthetic checkpoints of real shapes.

    python -m benchmarks.pair --shape llama-2-7b [--dir DIR] [--device auto] [--no-naive] [--keep] [--lean]

For the named shape it synthesises a bf16 sharded base checkpoint and a derived partner (see
``benchmarks/shapes.py``), then runs, each in a fresh process: a cold comparison (empty
fingerprint cache), a warm one (fingerprints cached), and the straightforward implementation
(``benchmarks/naive.py``) for a ratio. Scores are checked against each other before any time is
reported. The machine's floor is measured in the same run: the bytes awm_jax must read over the
measured read bandwidth of those files, plus the flops it must do over the measured float32
matmul throughput. The JSON goes to ``benchmarks/results/pair-<shape>-<platform>[-<cpu model>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.host_blas import cpu_record, machine_tag
from benchmarks.shapes import SHAPES, synthesize_pair

RESULTS = Path(__file__).resolve().parent / "results"


def run_child(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmarks._child", *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    return result


def matmul_route() -> str:
    """The host matmul route the Grams and the cosine take: ``"mkl-bf16"`` (oneMKL's bf16 GEMM,
    the ``amx`` extra, on AMX), ``"xla-bf16"`` (XLA's bf16 dot) or ``"numpy-f32"``."""
    from awm_jax.numerics import host_blas

    return f"{host_blas.host_blas_route().name}-bf16" if host_blas.bf16_gemm_available() else "numpy-f32"


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best throughput of the host matmul route awm_jax uses (:func:`matmul_route`): a bf16
    ``W^T W`` through ``host_blas``, else a float32 matmul of the host BLAS."""
    rng = np.random.default_rng(0)
    if matmul_route() != "numpy-f32":
        from awm_jax.numerics import host_blas

        w = rng.standard_normal((n, n), np.float32).astype(host_blas.BF16)
        host_blas.gram_bf16(w)  # warm-up
        best = min(_timed(lambda: host_blas.gram_bf16(w)) for _ in range(repeats))
        return 2 * n**3 / best / 1e9
    a = rng.standard_normal((n, n), np.float32)
    a @ a  # warm-up
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def needed_tensors(folder: Path) -> list[tuple[Path, int, int]]:
    from awm_jax.io.checkpoint import Checkpoint
    from awm_jax.layouts import detect

    r = detect(Checkpoint(folder))
    names = [r.embedding_name] + [n for i in range(r.num_layers) for n in r.tensor_names(i)]
    return [(r.ckpt.info(n).file, r.ckpt.info(n).start, r.ckpt.info(n).nbytes) for n in names]


def read_bandwidth(spans: list[tuple[Path, int, int]]) -> tuple[int, float]:
    """Reads the given byte spans once; returns (bytes, bytes per second)."""
    buf = bytearray(64 << 20)
    total = 0
    t = time.perf_counter()
    for path, start, nbytes in spans:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            left = nbytes
            while left:
                got = f.readinto(memoryview(buf)[: min(left, len(buf))])
                total += got
                left -= got
    return total, total / (time.perf_counter() - t)


def flops_needed(shape) -> float:
    q_rows, k_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    gram = 2 * shape.layers * shape.hidden**2 * (q_rows + k_rows)  # one model
    cosine = 2 * shape.vocab * shape.hidden**2
    return 2 * gram + cosine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pair", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--dir", default=os.environ.get("AWM_BENCH_DIR", "/tmp/awm_bench"), help="where checkpoints are synthesised")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-naive", action="store_true", help="skip the straightforward implementation")
    p.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints afterwards")
    p.add_argument("--lean", action="store_true", help="synthesise only the tensors awm_jax reads")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    load_at_start = os.getloadavg()  # other work on the machine inflates every timing: recorded
    root = Path(args.dir) / shape.name
    marker = root / ".complete"
    t = time.perf_counter()
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        synthesize_pair(shape, root, lean=args.lean)
        marker.write_text("lean" if args.lean else "full")
    lean = marker.read_text().strip() == "lean"  # kept checkpoints are reused as they were written
    synth_s = time.perf_counter() - t
    base, derived = root / "base", root / "derived"
    print(f"[{shape.name}] checkpoints ready in {synth_s:.1f}s", flush=True)

    spans = needed_tensors(base) + needed_tensors(derived)
    nbytes, bandwidth = read_bandwidth(spans)
    gflops = matmul_gflops()
    floor = {"bytes_read": nbytes, "read_bandwidth_gbps": bandwidth / 1e9, "read_floor_s": nbytes / bandwidth,
             "flops": flops_needed(shape), "matmul_gflops": gflops, "matmul_route": matmul_route(), "compute_floor_s": flops_needed(shape) / (gflops * 1e9)}
    floor["floor_s"] = floor["read_floor_s"] + floor["compute_floor_s"]
    print(f"[{shape.name}] floor {floor['floor_s']:.1f}s (read {nbytes / 1e9:.2f} GB at {bandwidth / 1e9:.2f} GB/s, "
          f"{floor['flops'] / 1e12:.2f} TFLOP at {gflops:.0f} GFLOP/s)", flush=True)

    cache = Path(tempfile.mkdtemp(prefix="awm-bench-cache-", dir=args.dir))
    try:
        cold = run_child("awm", str(base), str(derived), str(cache), args.device)
        print(f"[{shape.name}] cold {cold['wall_s']:.1f}s wall (compare {cold['compare_s']:.1f}s), "
              f"peak RSS {cold['peak_rss_mb']:.0f} MB, score {cold['mean']:.6f}", flush=True)
        warm = run_child("awm", str(base), str(derived), str(cache), args.device)
        print(f"[{shape.name}] warm {warm['wall_s']:.1f}s wall (compare {warm['compare_s']:.1f}s), "
              f"peak RSS {warm['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if abs(cold["mean"] - warm["mean"]) > 1e-6 or not all(warm["cached"]):
        raise SystemExit("warm run did not reproduce the cold score from the cache")
    naive = None
    if not args.no_naive:
        naive = run_child("naive", str(base), str(derived))
        print(f"[{shape.name}] straightforward {naive['wall_s']:.1f}s wall, peak RSS {naive['peak_rss_mb']:.0f} MB, "
              f"score {naive['mean']:.6f}", flush=True)
        if abs(naive["mean"] - cold["mean"]) > 1e-4:
            raise SystemExit(f"scores disagree: awm_jax {cold['mean']} vs straightforward {naive['mean']}")
    result = {
        "shape": shape.__dict__, "machine": dict(cpu_record(), device=cold["environment"]["device"]),
        "synthesis_s": synth_s, "lean_checkpoints": lean, "floor": floor, "cold": cold, "warm": warm, "straightforward": naive,
        "ratios": {"cold_over_floor": cold["wall_s"] / floor["floor_s"],
                   "straightforward_over_cold": naive["wall_s"] / cold["wall_s"] if naive else None},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_at_start": load_at_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    platform_name = cold["environment"]["device"].split(":")[0]
    path = out / f"pair-{shape.name}-{platform_name}{'-' + machine_tag() if platform_name == 'cpu' else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"[{shape.name}] wrote {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
