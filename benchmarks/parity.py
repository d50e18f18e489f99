"""Parity with the paper's reference implementation on the parity set (optional input: ../shared/parity; docs/method.md).

    python -m benchmarks.parity [--shared ../shared] [--json benchmarks/results/parity.json]

Prints a Markdown table: for every pair, awm_jax's Wq/Wk/mean, the reference's mean, and the
largest absolute difference over Wq, Wk, mean and every per-layer score; cache off and on. The
scores are the paper's mode (``awm_jax.options.PAPER``: the signed permutation on the stored
projections), which is what the reference implementation computes; the default mode folds the
norm gains first and undoes a rotated residual basis.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import awm_jax
from awm_jax.options import PAPER


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity")
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    p.add_argument("--json", help="also write the rows as JSON")
    args = p.parse_args(argv)
    pairs = json.loads((Path(args.shared) / "parity" / "expected.json").read_text())["pairs"]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for pair in pairs:
            ref = pair["reference"]
            worst = 0.0
            for kwargs in ({"cache": False}, {"cache_dir": cache}, {"cache_dir": cache}):
                r = awm_jax.compare(Path(args.shared) / "parity" / pair["model_a"],
                                    Path(args.shared) / "parity" / pair["model_b"], **PAPER, **kwargs)
                got = {"Wq": r.wq, "Wk": r.wk, "mean": r.mean}
                errs = [abs(got[k] - ref[k]) for k in got]
                errs += [abs(l.wq - ref["per_layer_Wq"][str(l.a_layer)]) for l in r.layers]
                errs += [abs(l.wk - ref["per_layer_Wk"][str(l.a_layer)]) for l in r.layers]
                worst = max(worst, *errs)
            rows.append({"pair": pair["label"], "wq": r.wq, "wk": r.wk, "mean": r.mean, "reference_mean": ref["mean"],
                         "max_abs_diff": worst, "verdict": r.verdict, "z_reference": r.z_reference})
    print(f"machine: {platform.machine()} {platform.processor() or ''} ({platform.platform()}), "
          f"device {r.environment['device']}, awm_jax {awm_jax.__version__}, jax {r.environment['jax']}\n")
    print("| pair | Wq | Wk | mean | reference mean | max abs diff (all scores, cache off/cold/warm) | z (signed) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pair']} | {row['wq']:.6f} | {row['wk']:.6f} | {row['mean']:.6f} | {row['reference_mean']:.6f} "
              f"| {row['max_abs_diff']:.1e} | {row['z_reference']:.1f} | {row['verdict']} |")
    print(f"\nlargest difference over all pairs: {max(r['max_abs_diff'] for r in rows):.1e} (bound 1e-4)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
