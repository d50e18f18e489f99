"""Cost of the fingerprint cache's checks at a model shape (default Llama-2-7B).

    python -m benchmarks.cache_verify [--shape llama-2-7b] [--sample-gb 1] [--full] [--dir DIR]

On this machine, with a sample Gram file of ``--sample-gb`` (random float32, in the page cache
after it is written), it times:

* publishing: the streamed block checksums (:class:`BlockDigest`, one thread: what the writer
  thread adds while the Grams are computed), and SHA-256 of the same bytes for comparison (the
  block checksums were SHA-256 up to cache format 3);
* opening: :func:`file_digests` of the whole file on one thread and on ``verify_threads()``
  threads (what ``lookup`` adds once per process per entry);
* the check against the weights: ``K v`` and ``W^T (W v)`` for one layer of the shape's Q and K
  (the one-layer weight read it also needs is not included);

then extrapolates the checksum costs to the shape's Q and K Grams as stored (upper triangles:
``2 L n (n + 1) / 2`` float32). With ``--full`` it also writes a real cache entry of the shape
and times ``verify_entry`` on it and the reading (unpacking) of every layer's Grams once, whole
(as a pair's base) and in upper form (as its target); the files are in the page cache, as on a
warm run (a cold disk adds its read time). The JSON goes to
``benchmarks/results/cache-verify-<shape>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from awm_jax._version import ALGORITHM_VERSION
from awm_jax.fingerprint._checksum import BLOCK_BYTES, DIGEST_NAME, BlockDigest, file_digests, verify_threads
from awm_jax.fingerprint.cache import CACHE_FORMAT, gram_file_bytes, verify_entry
from awm_jax.fingerprint.grams import GramSet
from awm_jax.options import DEFAULT_NORM_GAINS
from benchmarks.host_blas import cpu_record
from benchmarks.shapes import SHAPES

RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9


def _best(run, repeats: int = 3) -> float:
    """Minimum wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def _write_random(path: Path, nbytes: int, digest: BlockDigest | None = None) -> None:
    rng = np.random.default_rng(0)
    chunk = rng.standard_normal(16 * 1024 * 1024 // 4).astype(np.float32)  # 16 MiB, repeated
    with open(path, "wb") as f:
        left = nbytes
        while left:
            part = memoryview(chunk).cast("B")[: min(left, chunk.nbytes)]
            f.write(part)
            if digest is not None:
                digest.update(part)
            left -= len(part)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cache_verify", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
    p.add_argument("--sample-gb", type=float, default=1.0)
    p.add_argument("--full", action="store_true", help="also verify a real cache entry of the shape")
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    n, layers = shape.hidden, shape.layers
    gram_bytes = 2 * gram_file_bytes(n, layers)  # Q and K, stored as upper triangles
    scratch = Path(tempfile.mkdtemp(prefix="awm_jax-verify-", dir=args.dir))
    record: dict = {"benchmark": "cache_verify", "shape": shape.name, "hidden": n, "layers": layers,
                    "qk_gram_bytes": gram_bytes, "block_bytes": BLOCK_BYTES, "threads": verify_threads(),
                    "checksum": DIGEST_NAME,
                    "machine": {**cpu_record(), "platform": platform.platform(), "cpus": os.cpu_count(),
                                "load_average_at_start": os.getloadavg()[0]}}
    try:
        sample = scratch / "sample.f32"
        size = int(args.sample_gb * GB) // 4 * 4
        _write_random(sample, size)
        data = sample.read_bytes()  # streaming cost measured from memory, as the writer thread sees it
        streamed = _best(lambda: BlockDigest().update(data))
        sha256 = _best(lambda: hashlib.sha256(data).digest())
        del data
        fd = os.open(sample, os.O_RDONLY)
        try:
            file_digests(fd, size)  # pages in
            import awm_jax.fingerprint._checksum as checksum

            real_threads = checksum.verify_threads
            checksum.verify_threads = lambda: 1
            one = _best(lambda: file_digests(fd, size))
            checksum.verify_threads = real_threads
            many = _best(lambda: file_digests(fd, size))
        finally:
            os.close(fd)
        rate = {"publish_stream_gbps": size / streamed / GB, "sha256_1_thread_gbps": size / sha256 / GB,
                "open_1_thread_gbps": size / one / GB,
                f"open_{verify_threads()}_threads_gbps": size / many / GB}
        record.update(sample_bytes=size, rates=rate, extrapolated_s={
            "publish_stream": gram_bytes / (size / streamed), "open_1_thread": gram_bytes / (size / one),
            f"open_{verify_threads()}_threads": gram_bytes / (size / many)})
        sample.unlink()

        rng = np.random.default_rng(1)
        q_dim, k_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        ws = [rng.standard_normal((rows, n)).astype(np.float32) for rows in (q_dim, k_dim)]
        grams = [w.T @ w for w in ws]
        v = rng.choice(np.array([-1.0, 1.0], np.float32), n)

        def weight_check():
            for w, k in zip(ws, grams):
                np.linalg.norm((k @ v).astype(np.float64) - (w.T @ (w @ v)).astype(np.float64))

        record["weight_check_s"] = _best(weight_check)

        if args.full:
            key = "0" * 64
            folder = scratch / "fingerprints" / key
            folder.mkdir(parents=True)
            digests = {}
            for name in ("gram_q.f32", "gram_k.f32"):
                d = BlockDigest()
                _write_random(folder / name, gram_file_bytes(n, layers), d)
                digests[name] = d.hexdigests()
            meta = {"format": CACHE_FORMAT, "content_key": key, "algorithm": ALGORITHM_VERSION, "n": n,
                    "num_layers": layers, "kind": "qk", "norm_gains": DEFAULT_NORM_GAINS, "block_bytes": BLOCK_BYTES,
                    "files": {k: {"bytes": gram_file_bytes(n, layers), DIGEST_NAME: v} for k, v in digests.items()}}
            (folder / "meta.json").write_text(json.dumps(meta))
            t = time.perf_counter()
            verified = verify_entry(folder, key, n, layers, "qk")
            record["full_verify_entry_s"] = time.perf_counter() - t
            grams = GramSet(layers, n, "qk", folder=folder, key=key, guard=verified)
            for form, upper in (("whole", False), ("upper", True)):
                t = time.perf_counter()
                for layer in range(layers):  # what the engine reads of one model: every layer's Q and K Gram
                    grams.padded([layer], 1, upper)
                record[f"full_read_all_layers_{form}_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = args.out or RESULTS / f"cache-verify-{shape.name}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    for k, v in record["rates"].items():
        print(f"{k:28s} {v:6.2f} GB/s")
    for k, v in record["extrapolated_s"].items():
        print(f"{shape.name} Q+K Grams ({gram_bytes / GB:.2f} GB), {k:20s} {v:6.2f} s")
    print(f"weight check, one layer {record['weight_check_s'] * 1000:.1f} ms")
    if "full_verify_entry_s" in record:
        print(f"verify_entry on a real {shape.name} entry: {record['full_verify_entry_s']:.2f} s")
        for form in ("whole", "upper"):
            print(f"reading every layer's Q and K Gram once, {form}: {record[f'full_read_all_layers_{form}_s']:.2f} s")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
