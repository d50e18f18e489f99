"""The layer-score stage of a warm pair: grouped (each target layer read once) against a chunk at a time.

    python -m benchmarks.layer_scores [--shape llama-2-7b] [--dir /work/bench] [--repeats 5]

Uses the synthetic pair ``python -m benchmarks.pair --shape SHAPE --lean --keep --dir DIR`` left
in ``DIR/SHAPE`` (``base`` and ``derived``). Their fingerprints go to a cache under ``DIR`` (computed
once, then read as on a warm run). The pair is aligned once, and then
``engine.layers.score_equal_depth`` is timed both ways, alternating, ``--repeats`` times each:
* as released: layers in groups closed under the mismatch shifts (``shift_groups``);
* a chunk at a time, with the target read again for each shift (the path for depths no group
  fits, and the only path before the groups).

Scores are checked to agree (1e-5) before any time is reported. The JSON goes to
``benchmarks/results/layer-scores-<shape>-<cpu model>.json``, with the medians and every time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layer_scores", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama-2-7b")
    p.add_argument("--dir", default="/work/bench", help="where benchmarks.pair --keep left the pair")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    import jax

    from awm_jax.engine import layers
    from awm_jax.engine.align import align_pair
    from awm_jax.engine.models import prepare_model
    from awm_jax.fingerprint import FingerprintCache
    from benchmarks.host_blas import cpu_record, machine_tag

    root = Path(args.dir) / args.shape
    if not (root / "base").is_dir() or not (root / "derived").is_dir():
        print(f"no pair in {root}: run python -m benchmarks.pair --shape {args.shape} --lean --keep --dir {args.dir}",
              file=sys.stderr)
        return 2
    grouped = layers.shift_groups
    chunked = lambda *a: None  # noqa: E731 - no group fits: a chunk at a time
    with jax.default_device(jax.devices("cpu")[0]):
        cache = FingerprintCache(Path(args.dir) / "layer-scores-cache")
        a, b = prepare_model(root / "base", cache=cache), prepare_model(root / "derived", cache=cache)
        align = align_pair(a, b, "assignment")
        base, target = (a, b) if align.base_is_a else (b, a)
        times: dict[str, list[float]] = {"grouped": [], "chunked": []}
        scores = {}
        for name, rule in (("grouped", grouped), ("chunked", chunked)):  # warm-up: compilation, page cache
            layers.shift_groups = rule
            scores[name] = layers.score_equal_depth(base.grams, target.grams, align)
        if not np.allclose(scores["grouped"].wq, scores["chunked"].wq, atol=1e-5):
            raise SystemExit("the two paths disagree")
        for _ in range(args.repeats):
            for name, rule in (("grouped", grouped), ("chunked", chunked)):
                layers.shift_groups = rule
                t = time.perf_counter()
                layers.score_equal_depth(base.grams, target.grams, align)
                times[name].append(time.perf_counter() - t)
        layers.shift_groups = grouped
    record = {"shape": args.shape, "machine": cpu_record(), "layers": base.grams.num_layers, "n": base.grams.n,
              "median_s": {k: statistics.median(v) for k, v in times.items()}, "times_s": times,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"layer-scores-{args.shape}-{machine_tag()}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["median_s"]), f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
