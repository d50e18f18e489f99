"""Cost of a scan: one model of a real shape (fingerprint cached) against N sketches of that shape.

The scanned model is a lean checkpoint of the shape (embedding, Q, K and norms at their real
sizes; ``benchmarks.shapes``); its fingerprint is computed once during the setup (the cache
verifies a cached Gram against the weights, so it must be the real one) and the timed
``prepare_model`` is a cache hit. The catalogue's sketches are synthesised at the
planned size of the shape (``catalogue.sketch.plan_sketch``): the model's own token subset,
random embedding rows (random cosines are the assignment's slowest case) and random Grams.
Each run times ``prepare_model`` (cache hit) and ``scan_model`` over the catalogue, with the
per-stage split, and extrapolates linearly to 1,000 entries (each entry costs the same: the
fixed part is measured separately).

    python -m benchmarks.scan --shape llama-2-7b --entries 100 --work /tmp/awm-scan
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _lean_model(shape, folder: Path) -> Path:
    from awm_jax.synthetic import llama_config, write_model
    from benchmarks.shapes import BF16, _filler

    if (folder / "config.json").is_file():
        return folder
    n = shape.hidden
    q_rows, k_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    specs = [("model.embed_tokens.weight", (shape.vocab, n), BF16,
              lambda: np.random.default_rng(0).standard_normal((shape.vocab, n), np.float32).astype(BF16))]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (n,), BF16, lambda: np.ones(n, BF16)),
                  (p + "self_attn.q_proj.weight", (q_rows, n), BF16, lambda: _filler((q_rows, n))),
                  (p + "self_attn.k_proj.weight", (k_rows, n), BF16, lambda: _filler((k_rows, n)))]
    specs.append(("model.norm.weight", (n,), BF16, lambda: np.ones(n, BF16)))
    cfg = llama_config(shape.vocab, n, shape.layers, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate)
    return write_model(folder, specs, cfg, [f"t{i}" for i in range(shape.vocab)], 4 << 30)


def _catalogue(shape, model_folder: Path, folder: Path, entries: int) -> Path:
    from awm_jax.catalogue.sketch import encode_sketch, plan_sketch, retained_dims, select_tokens, sketch_digest
    from awm_jax.catalogue.store import MANIFEST, CatalogueEntry, load_catalogue, sketch_file_name, write_entry
    from awm_jax.engine.sketch import Sketch
    from awm_jax.io.vocab import load_vocabulary

    (folder / "sketches").mkdir(parents=True, exist_ok=True)
    have = {e.id: e for e in load_catalogue(folder).entries} if (folder / MANIFEST).is_file() else {}
    q_rows, k_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    plan = plan_sketch(shape.hidden, shape.layers, shape.vocab, q_rows, k_rows, 2)
    tokens = tuple(select_tokens(dict(load_vocabulary(model_folder).tokens), shape.vocab, plan.tokens))
    dims = retained_dims(shape.hidden, plan.dims)
    rng = np.random.default_rng(2)
    pool = []
    for _ in range(4):  # a few random Gram stacks, shared round-robin (values do not change the cost)
        a = rng.standard_normal((shape.layers, plan.dims, plan.dims), np.float32)
        pool.append(a @ a.transpose(0, 2, 1) / plan.dims)
    for i in range(len(have), entries):
        emb = rng.standard_normal((len(tokens), plan.dims), np.float32)
        sketch = Sketch(tokens, emb, dims, pool[i % 4], pool[(i + 1) % 4], shape.hidden, f"synthetic-{i:04d}")
        data = encode_sketch(sketch)
        digest = sketch_digest(data)
        entry = CatalogueEntry(id=sketch.name, source="synthetic", commit=None, layout="llama",
                               architecture="LlamaForCausalLM", hidden_size=shape.hidden, num_layers=shape.layers,
                               vocab_rows=shape.vocab, sketch_tokens=plan.tokens, sketch_dims=plan.dims,
                               model_bytes=plan.model_bytes, file=sketch_file_name(sketch.name, digest), sha256=digest,
                               bytes=len(data))
        write_entry(folder, have, entry, data)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-2-7b")
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--work", default="/tmp/awm-scan-bench")
    ap.add_argument("--workers", type=int, help="entries scored at once (default: catalogue.scan.SCAN_WORKERS; "
                                                "1: one at a time with the BLAS's own threads)")
    ap.add_argument("--out", help="default: benchmarks/results/scan-SHAPE-N-cpu.json")
    args = ap.parse_args(argv)

    import jax

    from awm_jax.catalogue import scan
    from awm_jax.catalogue.scan import scan_model
    from awm_jax.catalogue.store import load_catalogue
    from awm_jax.engine.models import prepare_model
    from awm_jax.fingerprint import FingerprintCache
    from benchmarks.host_blas import cpu_record
    from benchmarks.shapes import SHAPES

    shape = SHAPES[args.shape]
    if args.workers is not None:
        scan.SCAN_WORKERS = args.workers
    work = Path(args.work) / args.shape
    t0 = time.perf_counter()
    model_folder = _lean_model(shape, work / "model")
    catalogue_folder = _catalogue(shape, model_folder, work / "catalogue", args.entries)
    catalogue = load_catalogue(catalogue_folder)
    catalogue = type(catalogue)(catalogue.folder, catalogue.entries[: args.entries], catalogue.origin)
    with jax.default_device(jax.devices("cpu")[0]):
        prepare_model(model_folder, cache=FingerprintCache(work / "cache"))  # setup: computed once, then cached
        setup_s = time.perf_counter() - t0
        t = time.perf_counter()
        model = prepare_model(model_folder, cache=FingerprintCache(work / "cache"))
        prepare_s = time.perf_counter() - t
        assert model.cached, "the fingerprint should come from the cache"
        per_entry = []
        t = time.perf_counter()
        cpu = time.process_time()
        last = [t]

        def progress(entry, result):
            now = time.perf_counter()
            per_entry.append(now - last[0])
            last[0] = now

        result = scan_model(model, catalogue, progress=progress)
        scan_s = time.perf_counter() - t
        scan_cpu_s = time.process_time() - cpu
    steady = float(np.mean(per_entry[1:])) if len(per_entry) > 1 else scan_s
    sizes = [e.bytes for e in catalogue.entries]
    record = {
        "shape": args.shape, "entries": len(catalogue.entries), "sketch_bytes": sizes[0],
        "sketch_fraction_of_model": catalogue.entries[0].fraction, "sketch_tokens": catalogue.entries[0].sketch_tokens,
        "sketch_dims": catalogue.entries[0].sketch_dims, "prepare_s": prepare_s, "scan_s": scan_s,
        "total_s": prepare_s + scan_s, "scan_cpu_s": scan_cpu_s,
        "load_average": os.getloadavg(), "first_entry_s": per_entry[0], "steady_entry_s": steady,
        "stages": result.timings, "extrapolated_1000_s": prepare_s + per_entry[0] + steady * 999,
        "extrapolation": "linear in entries: prepare + first entry (compilation) + 999 x the mean later entry",
        "setup_s": setup_s, "machine": cpu_record(), "workers": scan.SCAN_WORKERS,
        "scored": len(result.matches), "derived": len(result.derived()),
    }
    out = Path(args.out or f"benchmarks/results/scan-{args.shape}-{len(catalogue.entries)}-cpu.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
