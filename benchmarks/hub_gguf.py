"""Partial reads of a GGUF hub repository: bytes fetched against the bytes of the tensors read.

    python -m benchmarks.hub_gguf [--vocab 32000 --hidden 512 --layers 4 --heads 8 --kv-heads 4
                                   --intermediate 1408] [--qtype Q8_0] [--dir DIR] [--keep]

Writes a Llama checkpoint of the shape (every tensor transformers saves, tiled filler values) as
one GGUF file with the ``gguf`` package's writer (2-D tensors as ``--qtype``, norms F32, a
vocabulary of ``--vocab`` tokens in the metadata, as llama.cpp's converter lays it out), serves it
with ``tests/hub_server.py`` as ``bench/model-gguf`` and, into a fresh hub cache, does what
``compare bench/model-gguf:Q8_0 ...`` does before computing: ``resolve_model(fetch="partial")``
(the header, by Range requests from 1 MiB doubling), open, detect the layout,
:func:`~awm_jax.engine.models.fetch_needed` (default ``--norm-gains fold``); then the same with
``--mlp``. Reports the bytes the content store sent, the header's bytes, the bytes of the tensors
read (:func:`~awm_jax.engine.models.needed_tensors`) and the requests; checks that every fetched
tensor's bytes equal the file's; writes ``benchmarks/results/hub-gguf.json``. Target: bytes sent at
most 1.05x the bytes of the header and the tensors read (each byte counted once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_BYTES = 1.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hub_gguf", description=__doc__.split("\n")[0])
    for name, default in (("vocab", 32000), ("hidden", 512), ("layers", 4), ("heads", 8), ("kv-heads", 4),
                          ("intermediate", 1408)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--qtype", default="Q8_0", help="GGML type of the 2-D tensors (one gguf can quantise)")
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("AWM_BENCH_DIR", "/work/tmp")) / "hub-gguf")
    parser.add_argument("--keep", action="store_true", help="keep the files and the cache")
    args = parser.parse_args(argv)

    import pytest

    from awm_jax.engine.models import fetch_needed, needed_tensors, open_checkpoint
    from awm_jax.io.hub import resolve_model
    from awm_jax.io.hub_gguf import header_length
    from awm_jax.io.sparse import SparseFile
    from awm_jax.layouts import detect
    from benchmarks.hub_partial import _fresh_cache
    from tests.hub_server import StandInHub, write_gguf_model, write_llama_model

    args.dir.mkdir(parents=True, exist_ok=True)
    monkeypatch = pytest.MonkeyPatch()
    try:
        t = time.perf_counter()
        parent = write_llama_model(args.dir / "parent", vocab=args.vocab, hidden=args.hidden, layers=args.layers,
                                   intermediate=args.intermediate, heads=args.heads, kv_heads=args.kv_heads,
                                   shard_bytes=None, tile=True)
        repo = args.dir / "repo"
        repo.mkdir(exist_ok=True)
        (path,) = write_gguf_model(parent, repo / f"model-{args.qtype}.gguf", qtype=args.qtype)
        size = path.stat().st_size
        print(f"GGUF: {size / 1e6:.1f} MB ({args.qtype}), written in {time.perf_counter() - t:.0f} s", flush=True)
        rows = {}
        with StandInHub() as hub:
            hub.add_folder("bench/model-gguf", repo, on_disk=True)
            _fresh_cache(monkeypatch, args.dir / "cache", hub.endpoint)
            spec = f"bench/model-gguf:{args.qtype}"
            for mlp in (False, True):
                sent, logged = hub.cdn_bytes, len(hub.log)
                t = time.perf_counter()
                resolved = detect(open_checkpoint(resolve_model(spec, fetch="partial")), None)
                stats = fetch_needed(resolved, mlp)
                wall = time.perf_counter() - t
                ckpt = resolved.ckpt
                names = needed_tensors(resolved, mlp, "fold")
                read_bytes = sum(ckpt.info(n).nbytes for n in names)
                with open(path, "rb") as f:
                    data_start = header_length(f.read(SparseFile.load(ckpt.files[0]).ranges[0].end))
                spans = sorted([(0, data_start)] + [(ckpt.info(n).start, ckpt.info(n).start + ckpt.info(n).nbytes)
                                                    for n in names])
                union, at = 0, 0
                for s, e in spans:  # bytes of the header and the tensors read, each counted once
                    union += max(0, e - max(s, at))
                    at = max(at, e)
                with open(path, "rb") as source, open(ckpt.files[0], "rb") as partial:
                    for n in names:  # the fetched bytes are the file's
                        info = ckpt.info(n)
                        source.seek(info.start)
                        partial.seek(info.start)
                        assert source.read(info.nbytes) == partial.read(info.nbytes), n
                rows["mlp" if mlp else "qk"] = {
                    "tensors_read": len(names), "tensor_bytes_read": read_bytes,
                    "header_bytes": data_start, "needed_bytes": union,
                    "bytes_sent": hub.cdn_bytes - sent, "requests": len(hub.log) - logged,
                    "fetched_bytes_reported": stats.fetched_bytes, "wall_s": round(wall, 2),
                }
                row = rows["mlp" if mlp else "qk"]
                print(f"{'--mlp' if mlp else 'default'}: {row['bytes_sent'] / 1e6:.3f} MB sent ({row['requests']} "
                      f"requests) for {read_bytes / 1e6:.3f} MB of tensors read ({len(names)} tensors, all read so "
                      f"far) + {data_start / 1e6:.3f} MB header; file {size / 1e6:.1f} MB", flush=True)
    finally:
        monkeypatch.undo()
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    qk, mlp = rows["qk"], rows["mlp"]
    result = {
        "shape": {k: getattr(args, k.replace("-", "_")) for k in ("vocab", "hidden", "layers", "heads", "kv_heads",
                                                                  "intermediate")},
        "qtype": args.qtype, "file_bytes": size, "default": qk, "with_mlp": mlp,
        "bytes_ratio": round(qk["bytes_sent"] / qk["needed_bytes"], 4),
        "bytes_ratio_mlp": round((qk["bytes_sent"] + mlp["bytes_sent"]) / mlp["needed_bytes"], 4),
        "file_fraction": round(qk["bytes_sent"] / size, 4),
        "target": {"bytes_ratio": TARGET_BYTES},
        "machine": f"{platform.machine()} {os.cpu_count()} cores ({platform.processor() or platform.platform()}), "
                   "shared; stand-in hub and client on one machine",
    }
    result["met"] = max(result["bytes_ratio"], result["bytes_ratio_mlp"]) <= TARGET_BYTES
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "hub-gguf.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bytes sent / (header + tensor bytes read) {result['bytes_ratio']:.4f}, with --mlp later "
          f"{result['bytes_ratio_mlp']:.4f} (target <= {TARGET_BYTES}); "
          f"{result['file_fraction']:.3f} of the file fetched; {out}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
