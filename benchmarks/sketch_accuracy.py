"""Accuracy of AWM sketches: sketch-vs-model scores against the exact pair scores.

For every labelled pair (A, B) of the parity set, the wild set, the micro lineage zoo and the
function-preserving manipulations of a wild model (every recipe of ``awm_jax.zoo.manipulate``),
under every alignment mode, this compares the score of B against A's sketch with the exact
engine score of (B, A) (``engine.score_pair``; the scanned model is model A of the pair, as in
``compare MODEL ENTRY``), and likewise A against B's sketch; sketches are written to bytes and
read back, as a catalogue stores them. Recorded: the difference of the mean score, whether
the verdicts agree, and the calibrated p-values.

Two sketch sizes: ``planned`` (what ``catalogue build`` writes; for these small models every
dimension is kept) and ``reduced`` (half the dimensions, 256 tokens: the regime of a large
model's sketch, where the score is an estimate from a subset of the residual dimensions).

    python -m benchmarks.sketch_accuracy [--out benchmarks/results/sketch-accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The test data beside the repository (``$AWM_SHARED`` overrides) and a built micro zoo
#: (``python -m awm_jax.zoo build --micro``; ``$AWM_MICRO_ZOO`` overrides the zoo's default folder).
SHARED = Path(os.environ.get("AWM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MICROZOO = Path(os.environ.get("AWM_MICRO_ZOO", Path.home() / ".cache" / "awm_jax" / "zoo-micro"))
MODES = ("assignment", "orthogonal", "auto")
TOLERANCE = 0.02
MANIPULATED_BASE = "stories260K"


def _pairs(shared: Path, microzoo: Path) -> list[dict]:
    """Every labelled pair: set, a, b (folders), label."""
    out = []
    parity = json.loads((shared / "parity" / "expected.json").read_text())
    for p in parity["pairs"]:
        out.append({"set": "parity", "a": shared / "parity" / p["model_a"], "b": shared / "parity" / p["model_b"],
                    "label": p["relation"]})
    wild = json.loads((shared / "wild" / "MANIFEST.json").read_text())
    folders = {m["name"]: shared / "wild" / m["folder"] for m in wild["models"]}
    for p in wild["pairs"]:
        out.append({"set": "wild", "a": folders[p["a"]], "b": folders[p["b"]], "label": p["label"]})
    if (microzoo / "MANIFEST.json").is_file():
        zoo = json.loads((microzoo / "MANIFEST.json").read_text())
        folders = {m["name"]: microzoo / m["folder"] for m in zoo["models"]}
        for p in zoo["pairs"]:
            out.append({"set": "microzoo", "a": folders[p["a"]], "b": folders[p["b"]], "label": p["label"]})
    return out


def manipulated_models(source: Path, work: Path) -> list[Path]:
    """``source`` rewritten by every function-preserving recipe (``zoo.manipulate.MANIPULATIONS``)."""
    from safetensors.numpy import load_file, save_file

    from awm_jax.zoo.checkpoint import config_from_hf
    from awm_jax.zoo.manipulate import MANIPULATIONS, manipulate

    config = json.loads((source / "config.json").read_text())
    cfg = config_from_hf({"pad_token_id": 0, **config})
    state = {k: np.asarray(v, np.float32) for k, v in load_file(str(source / "model.safetensors")).items()}
    out = []
    for seed, kind in enumerate(sorted(MANIPULATIONS)):
        folder = work / f"{source.name}-{kind}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            new = manipulate(kind, cfg, dict(state), 100 + seed)
            save_file({k: np.ascontiguousarray(v, np.float32) for k, v in new.items()}, str(folder / "model.safetensors"))
            for f in source.iterdir():
                if f.name != "model.safetensors" and f.is_file():
                    shutil.copy(f, folder / f.name)
        out.append(folder)
    return out


def run(shared: Path, microzoo: Path, work: Path) -> dict:
    import jax

    from awm_jax.catalogue.sketch import decode_sketch, encode_sketch, make_sketch
    from awm_jax.engine import prepare_model, score_pair
    from awm_jax.engine.sketch import score_against_sketch
    from awm_jax.numerics.alignment import DegenerateAlignment
    from awm_jax.options import PairOptions

    pairs = _pairs(shared, microzoo)
    base = shared / "wild" / MANIPULATED_BASE
    for folder in manipulated_models(base, work):
        pairs.append({"set": "manipulated", "a": base, "b": folder, "label": "derived"})
    models, sketches = {}, {}

    def model(path):
        if path not in models:
            models[path] = prepare_model(path)
        return models[path]

    def sketch(path, size):
        key = (path, size)
        if key not in sketches:
            m = model(path)
            extra = {} if size == "planned" else {"dims": max(4, m.hidden_size // 2), "tokens": 256}
            s, plan = make_sketch(m, path.name, **extra)
            data = encode_sketch(s)
            sketches[key] = (decode_sketch(data, path.name), len(data), plan)
        return sketches[key]

    def scored(fn, *args):  # a pair the engine refuses (too little evidence to align) is recorded, not scored
        try:
            return fn(*args)
        except DegenerateAlignment as e:
            return e

    rows = []
    with jax.default_device(jax.devices("cpu")[0]):
        for p in pairs:
            a, b = model(p["a"]), model(p["b"])
            for mode in MODES:
                options = PairOptions(alignment=mode)
                exact = {"B vs sketch(A)": scored(score_pair, b, a, options),
                         "A vs sketch(B)": scored(score_pair, a, b, options)}
                for size in ("planned", "reduced"):
                    for direction, full, sketched in (("B vs sketch(A)", b, p["a"]), ("A vs sketch(B)", a, p["b"])):
                        ex = exact[direction]
                        sk, nbytes, plan = sketch(sketched, size)
                        t = time.perf_counter()
                        got = scored(score_against_sketch, full, sk, options)
                        row = {"set": p["set"], "a": p["a"].name, "b": p["b"].name, "label": p["label"],
                               "alignment": mode, "sketch": size, "direction": direction, "tokens": plan.tokens,
                               "dims": plan.dims, "sketch_bytes": nbytes, "seconds": time.perf_counter() - t}
                        for key, r in (("exact", ex), ("sketch", got)):
                            refused = isinstance(r, DegenerateAlignment)
                            row[f"{key}_mean"] = None if refused else r.mean
                            row[f"{key}_verdict"] = "refused" if refused else r.verdict
                            row[f"{key}_p"] = None if refused or np.isnan(r.p_value) else r.p_value
                        both = row["exact_mean"] is not None and row["sketch_mean"] is not None
                        row["diff"] = abs(row["sketch_mean"] - row["exact_mean"]) if both else None
                        row["same_verdict"] = row["sketch_verdict"] == row["exact_verdict"]
                        rows.append(row)
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    """Per sketch size and set: pairs, largest difference, pairs within the tolerance, verdict agreement."""
    out = {}
    for size in ("planned", "reduced"):
        for name in sorted({r["set"] for r in rows}) + ["all"]:
            sel = [r for r in rows if r["sketch"] == size and (name == "all" or r["set"] == name)]
            if not sel:
                continue
            scored = [r for r in sel if r["diff"] is not None]
            out[f"{size}/{name}"] = {
                "comparisons": len(sel), "max_diff": max((r["diff"] for r in scored), default=0.0),
                "within_tolerance": sum(r["diff"] <= TOLERANCE for r in scored),
                "same_verdict": sum(r["same_verdict"] for r in sel),
                "refused": {"both": sum(r["exact_verdict"] == r["sketch_verdict"] == "refused" for r in sel),
                            "sketch_only": sum(r["sketch_verdict"] == "refused" != r["exact_verdict"] for r in sel),
                            "exact_only": sum(r["exact_verdict"] == "refused" != r["sketch_verdict"] for r in sel)},
            }
    return out


def table(summary: dict) -> str:
    """The docs table."""
    lines = ["| sketch / set | comparisons | max abs diff of mean | within 0.02 | same verdict | refused: both / "
             "sketch only / exact only |", "|---|---:|---:|---:|---:|---|"]
    for key, s in summary.items():
        r = s["refused"]
        lines.append(f"| {key} | {s['comparisons']} | {s['max_diff']:.2e} | {s['within_tolerance']} | "
                     f"{s['same_verdict']} | {r['both']} / {r['sketch_only']} / {r['exact_only']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/sketch-accuracy.json")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--microzoo", default=str(MICROZOO))
    ap.add_argument("--work", help="folder for the manipulated models (default: a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="awm-sketch-acc-") as tmp:
        result = run(Path(args.shared), Path(args.microzoo), Path(args.work or tmp))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["summary"]))
    bad = [r for r in result["rows"] if r["sketch"] == "planned"
           and ((r["diff"] or 0.0) > TOLERANCE or not r["same_verdict"])]
    for r in bad:
        print(f"outside: {r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
