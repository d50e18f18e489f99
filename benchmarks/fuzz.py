"""Long fuzzing run of the parsers of untrusted files and of the fingerprint cache (the test
suite runs a short one).

    python -m benchmarks.fuzz [--cases 14000] [--seed 20261127] [--targets NAME...] [--out benchmarks/results/fuzz.json]

Runs every target of ``tests/bad_input/fuzz_targets.py`` (safetensors headers, index files,
tokenizer.json, vocab.json, tokenizer.model / *.tiktoken, config.json, config.json through
layout detection, and damaged, swapped or forged fingerprint cache entries) with hypothesis,
``--cases`` examples per target. Unlike the test, an unexpected exception is recorded and the
run goes on, so the count is complete; an example running longer than ``--hang-s`` counts as a
hang. The JSON records, per target, the cases run, how many were read, refused with a
documented error or (cache entries) healed, the unexpected exceptions (type, message, where,
the example; ``wrong_results`` counts those that are wrong Grams or scores), the slowest
example and the time taken. With ``--targets``, the results of the other targets already in
the output file are kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import hypothesis
import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.bad_input.fuzz_targets import TARGETS, Target, run_example

RESULTS = Path(__file__).resolve().parent / "results"


class _Hang(Exception):
    """An example ran past the time limit."""


def _on_alarm(signum, frame):
    raise _Hang("example ran past the time limit")


def fuzz_target(target: Target, cases: int, run_seed: int, base: Path, hang_s: int) -> dict:
    """Runs ``cases`` examples of one target; returns its statistics."""
    stats: dict = {"cases": 0, "ok": 0, "refused": 0, "healed": 0, "unexpected": [], "slowest_s": 0.0}

    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(run_seed)
    @given(target.strategy)
    def check(example):
        number = stats["cases"]
        stats["cases"] += 1
        folder = base / f"{target.name}-{number}"
        t = time.perf_counter()
        signal.alarm(hang_s)
        try:
            stats[run_example(target, folder, example)] += 1
        except Exception as e:  # noqa: BLE001 - recording every unexpected exception is the point
            frame = traceback.extract_tb(e.__traceback__)[-1]
            stats["unexpected"].append({
                "type": type(e).__name__, "message": str(e)[:300],
                "where": f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})", "example": repr(example)[:400],
            })
        finally:
            signal.alarm(0)
            stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(folder.parent / (folder.name + "-outside"), ignore_errors=True)

    t = time.perf_counter()
    check()
    stats["seconds"] = time.perf_counter() - t
    stats["slowest_s"] = round(stats["slowest_s"], 4)
    stats["seconds"] = round(stats["seconds"], 2)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2_000, help="examples per target")
    p.add_argument("--seed", type=int, default=20261127, help="hypothesis seed (recorded)")
    p.add_argument("--hang-s", type=int, default=10, help="an example running longer is a hang")
    p.add_argument("--targets", nargs="*", default=sorted(TARGETS), choices=sorted(TARGETS))
    p.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, _on_alarm)
    command = "python -m benchmarks.fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
    per_target = args.cases
    results = {}
    if args.out.is_file() and set(args.targets) != set(TARGETS):  # a partial run updates the record
        results = {k: v for k, v in json.loads(args.out.read_text()).get("targets", {}).items()
                   if k in TARGETS and k not in args.targets}
    with tempfile.TemporaryDirectory(prefix="awm_jax-fuzz-") as tmp:
        for name in args.targets:
            results[name] = fuzz_target(TARGETS[name], per_target, args.seed, Path(tmp), args.hang_s)
            r = results[name]
            r["command"] = command
            print(f"{name:20s} {r['cases']:6d} cases  {r['ok']:6d} read  {r['refused']:6d} refused  "
                  f"{r['healed']:6d} healed  {len(r['unexpected']):3d} unexpected  slowest {r['slowest_s']:.3f} s  "
                  f"{r['seconds']:.1f} s", flush=True)
    total = sum(r["cases"] for r in results.values())
    unexpected = sum(len(r["unexpected"]) for r in results.values())
    record = {
        "benchmark": "fuzz", "command": command,
        "total_cases": total, "unexpected_exceptions": unexpected, "hangs": sum(
            1 for r in results.values() for u in r["unexpected"] if u["type"] == "_Hang"),
        "wrong_results": sum(1 for r in results.values() for u in r["unexpected"]
                             if u["type"] == "AssertionError" and u["message"].startswith("wrong")),
        "seconds": round(sum(r["seconds"] for r in results.values()), 1), "seed": args.seed, "targets": results,
        "environment": {"python": platform.python_version(), "hypothesis": hypothesis.__version__,
                        "numpy": np.__version__, "machine": platform.machine(), "system": platform.system()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{total} cases, {unexpected} unexpected exceptions, {record['seconds']} s -> {args.out}")
    return 0 if unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
