"""The paper's reference code on the pair benchmark's checkpoints, for the cold-time ratio.

    python -m benchmarks.reference --shape llama-2-7b --reference DIR --python PY [--dir DIR]

``DIR`` is a checkout of the paper's published reference implementation (its ``main.py``
compares two folders: ``main.py --model_paths A B --device cpu``) and ``PY`` an interpreter with
what it imports (torch, scikit-learn, safetensors, sentencepiece). The pair is the one
``benchmarks/pair.py`` synthesised in ``--dir`` (run that first, with ``--keep``). The reference
runs once in a fresh process with its default threads; its wall time and peak RSS are measured
from outside, and its printed mean (Wq+Wk)/2 score is checked against awm_jax's before anything is
reported. The JSON goes to ``benchmarks/results/reference-<shape>-cpu-<cpu model>.json``,
with the ratio of the pair benchmark's cold wall time (from its JSON of the same machine) to the
reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.host_blas import cpu_record, machine_tag
from benchmarks.shapes import SHAPES

RESULTS = Path(__file__).resolve().parent / "results"
_MEAN = re.compile(r"Average Wq_Wk_weights\s+Similarity\(%\)\s*=\s*([0-9.]+)")
#: The reference prints its mean in percent with two decimals.
SCORE_TOLERANCE = 0.006


def run_reference(python: str, main: Path, a: Path, b: Path) -> dict:
    """One reference comparison in a fresh process: wall time, peak RSS, printed mean score."""
    t = time.perf_counter()
    proc = subprocess.Popen([python, str(main), "--model_paths", str(a.resolve()), str(b.resolve()), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"the reference failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    match = _MEAN.search(out)
    if match is None:
        raise SystemExit("the reference printed no mean score")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the one child waited for
    return {"wall_s": wall, "peak_rss_mb": peak, "mean": float(match.group(1)) / 100}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--reference", required=True, type=Path, help="checkout of the reference code (has main.py)")
    p.add_argument("--python", default=sys.executable, help="interpreter with the reference's packages")
    p.add_argument("--dir", default=os.environ.get("AWM_BENCH_DIR", "/tmp/awm_bench"),
                   help="where benchmarks/pair.py synthesised the pair (with --keep)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    shape = SHAPES[args.shape]
    root = Path(args.dir) / shape.name
    if not (root / ".complete").exists():
        raise SystemExit(f"{root}: no synthesised pair; run python -m benchmarks.pair --shape {shape.name} --keep "
                         "first")
    tag = machine_tag()
    ours_path = Path(args.out) / f"pair-{shape.name}-cpu-{tag}.json"  # benchmarks/pair.py on this CPU
    ours = json.loads(ours_path.read_text()) if ours_path.exists() else None
    load = os.getloadavg()
    ref = run_reference(args.python, args.reference / "main.py", root / "base", root / "derived")
    if ours is not None and abs(ref["mean"] - ours["cold"]["mean"]) > SCORE_TOLERANCE:
        raise SystemExit(f"scores differ: reference {ref['mean']:.4f}, awm_jax {ours['cold']['mean']:.4f}")
    print(f"[{shape.name}] reference {ref['wall_s']:.1f}s wall, peak RSS {ref['peak_rss_mb']:.0f} MB, "
          f"mean {ref['mean']:.4f}", flush=True)
    record = {
        "shape": shape.name, "machine": cpu_record(),
        "lean_checkpoints": (root / ".complete").read_text().strip() == "lean",
        "reference": ref, "threads": "default (all cores)", "load_average_at_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "awm_jax": None if ours is None else {
            "cold_wall_s": ours["cold"]["wall_s"], "warm_wall_s": ours["warm"]["wall_s"], "mean": ours["cold"]["mean"],
            "date": ours.get("date")},
    }
    if ours is not None:
        record["cold_over_reference"] = ours["cold"]["wall_s"] / ref["wall_s"]
        print(f"[{shape.name}] awm_jax cold {ours['cold']['wall_s']:.1f}s = {record['cold_over_reference']:.2f}x the "
              "reference", flush=True)
    out = Path(args.out) / f"reference-{shape.name}-cpu-{tag}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"[{shape.name}] wrote {out}")


if __name__ == "__main__":
    main()
