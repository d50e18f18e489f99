"""Partial hub downloads against whole-file downloads, through the stand-in hub with a bandwidth limit.

    python -m benchmarks.hub_partial [--shape llama-2-7b] [--rate-mb 100] [--dir DIR] [--keep]

Writes a sharded bf16 checkpoint of the shape (every tensor transformers saves, at its real size,
in the real name order; values are tiled filler, which a download does not look at) under
``--dir``, serves it from disk with ``tests/hub_server.py`` (hub and content store on loopback,
the content store limited to ``--rate-mb`` MB/s shared by all connections), then, each into a
fresh hub cache:

* **partial**: ``resolve_model(fetch="partial")`` (small files, the shards' headers), open,
  detect the layout and :func:`~awm_jax.engine.models.fetch_needed` (the tensors a comparison
  reads, with the default ``--norm-gains fold``): what ``compare`` does before computing;
* **full**: ``resolve_model(fetch="full")`` (whole weight files).

It reports the bytes the content store sent for each, the bytes of the tensors a comparison reads
(:func:`~awm_jax.engine.models.needed_tensors`), the requests, and the wall times; checks that
the partially fetched tensors equal the source bytes; and writes
``benchmarks/results/hub-partial[-SHAPE].json``. Targets: bytes fetched at most 1.05x the bytes
read, wall time at most 0.25x the whole download. The checkpoint and both caches are deleted
afterwards unless ``--keep``. Disk: about twice the checkpoint's size at the peak (checked first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from benchmarks.shapes import SHAPES

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_BYTES = 1.05
TARGET_TIME = 0.25


def _checkpoint_bytes(shape) -> int:
    n, v, layers, i = shape.hidden, shape.vocab, shape.layers, shape.intermediate
    kv = shape.kv_heads * shape.head_dim
    per_layer = 2 * n * n + 2 * kv * n + 3 * i * n + 2 * n
    return 2 * (2 * v * n + n + layers * per_layer)


def _fresh_cache(monkeypatch, root: Path, endpoint: str) -> None:
    from huggingface_hub import close_session

    from tests.hub_server import isolate_hub_client

    isolate_hub_client(monkeypatch, root, endpoint)
    close_session()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hub_partial", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama-2-7b", choices=sorted(SHAPES))
    parser.add_argument("--rate-mb", type=float, default=100.0, help="content-store bandwidth, MB/s (default 100)")
    parser.add_argument("--shard-gb", type=float, default=10.0, help="largest shard (default 10: Llama-2-7B's two shards)")
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("AWM_BENCH_DIR", "/work/tmp")) / "hub-partial")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and caches")
    args = parser.parse_args(argv)

    import pytest

    from awm_jax.engine.models import fetch_needed, needed_tensors
    from awm_jax.io.checkpoint import Checkpoint
    from awm_jax.io.hub import resolve_model
    from awm_jax.layouts import detect
    from tests.hub_server import StandInHub, write_llama_model

    shape = SHAPES[args.shape]
    size = _checkpoint_bytes(shape)
    args.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.dir).free
    if free < 2.3 * size:
        raise SystemExit(f"{args.dir}: {free / 1e9:.1f} GB free, the benchmark needs {2.3 * size / 1e9:.1f} GB")
    repo = args.dir / "repo"
    monkeypatch = pytest.MonkeyPatch()
    try:
        t = time.perf_counter()
        if not (repo / "config.json").is_file():
            write_llama_model(repo, vocab=shape.vocab, hidden=shape.hidden, layers=shape.layers,
                              intermediate=shape.intermediate, heads=shape.heads, kv_heads=shape.kv_heads,
                              dtype=ml_dtypes.bfloat16, shard_bytes=int(args.shard_gb * 1e9), tile=True)
        write_s = time.perf_counter() - t
        weights = sum(p.stat().st_size for p in repo.glob("*.safetensors"))
        print(f"checkpoint: {weights / 1e9:.2f} GB in {len(list(repo.glob('*.safetensors')))} shards "
              f"(written in {write_s:.0f} s)", flush=True)
        with StandInHub(rate=args.rate_mb * 1e6) as hub:
            hub.add_folder("bench/model", repo, on_disk=True)  # hashes the shards once (the hub's etags)

            _fresh_cache(monkeypatch, args.dir / "partial", hub.endpoint)
            sent, logged = hub.cdn_bytes, len(hub.log)
            t = time.perf_counter()
            folder = resolve_model("bench/model", fetch="partial")
            resolved = detect(Checkpoint(folder), None)
            stats = fetch_needed(resolved)
            partial_s = time.perf_counter() - t
            partial_bytes, partial_requests = hub.cdn_bytes - sent, len(hub.log) - logged
            names = needed_tensors(resolved, False, "fold")
            read_bytes = sum(resolved.ckpt.info(n).nbytes for n in names)
            print(f"partial: {partial_bytes / 1e9:.3f} GB sent for {read_bytes / 1e9:.3f} GB of tensors read "
                  f"({len(names)} tensors), {partial_requests} requests, {partial_s:.1f} s", flush=True)
            source = Checkpoint(repo)
            for name in sorted(names)[:: max(1, len(names) // 8)]:  # the fetched bytes are the source's
                assert np.array_equal(resolved.ckpt.read(name).view(np.uint16), source.read(name).view(np.uint16)), name
            before = len(hub.log)
            fetch_needed(resolved)
            assert len(hub.log) == before, "a model with its tensors present made a request"

            _fresh_cache(monkeypatch, args.dir / "full", hub.endpoint)
            sent, logged = hub.cdn_bytes, len(hub.log)
            t = time.perf_counter()
            resolve_model("bench/model", fetch="full")
            full_s = time.perf_counter() - t
            full_bytes, full_requests = hub.cdn_bytes - sent, len(hub.log) - logged
            print(f"full: {full_bytes / 1e9:.3f} GB sent, {full_requests} requests, {full_s:.1f} s", flush=True)
    finally:
        monkeypatch.undo()
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    result = {
        "shape": args.shape, "dtype": "bf16", "rate_mb_s": args.rate_mb, "checkpoint_bytes": weights,
        "tensors_read": len(names), "tensor_bytes_read": read_bytes,
        "partial": {"bytes_sent": partial_bytes, "requests": partial_requests, "wall_s": round(partial_s, 2),
                    "fetched_bytes_reported": stats.fetched_bytes},
        "full": {"bytes_sent": full_bytes, "requests": full_requests, "wall_s": round(full_s, 2)},
        "bytes_ratio": round(partial_bytes / read_bytes, 4), "time_ratio": round(partial_s / full_s, 4),
        "targets": {"bytes_ratio": TARGET_BYTES, "time_ratio": TARGET_TIME},
        "met": {"bytes": partial_bytes / read_bytes <= TARGET_BYTES, "time": partial_s / full_s <= TARGET_TIME},
        "machine": f"{platform.machine()} {os.cpu_count()} cores ({platform.processor() or platform.platform()}), "
                   "shared; stand-in hub and client on one machine",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("hub-partial.json" if args.shape == "llama-2-7b" else f"hub-partial-{args.shape}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bytes sent / bytes read {result['bytes_ratio']:.3f} (target <= {TARGET_BYTES}), wall partial / full "
          f"{result['time_ratio']:.3f} (target <= {TARGET_TIME}); {out}")
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
