"""Lineage benchmark: awm_jax and rival signals on the lineage zoo and the optional wild set (../shared/wild).

    python -m benchmarks.lineage --zoo DIR [--wild ../shared/wild] [--out benchmarks/results/lineage.json]
                                 [--docs docs/lineage.md] [--plots docs/img]
    python -m benchmarks.lineage --replot [--out benchmarks/results/lineage.json]   # redraw the plots only

Every labelled pair of the zoo's ``MANIFEST.json`` (built by ``python -m awm_jax.zoo build``) and
of the wild set is scored by AWM (the default, the signed permutation, the paper's computation,
order-preserving layer matching) and by the rivals
in ``benchmarks/rivals.py``. Derived pairs are the positives, independent pairs the negatives;
``shared-init`` and ``distilled`` pairs are reported apart. Per method: ROC AUC, partial AUC over
FPR <= 5% (normalised to [0, 1]), TPR at FPR <= 1% and at FPR = 0, the lowest derived against the
highest independent score; for AWM, z-scores per derivation category. Writes a JSON of every
pair's scores, a Markdown table and PNG plots (ROC on a log false-positive-rate axis, where the
low-FPR end that matters for a verdict is readable).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import awm_jax
from awm_jax.options import PAPER
from benchmarks.rivals import RIVALS

#: ``awm``: the default (auto alignment, norm gains folded); ``awm_permutation``: the paper's signed
#: permutation on folded gains; ``awm_paper``: the paper's computation (``awm_jax.options.PAPER``).
METHODS = ("awm", "awm_permutation", "awm_paper", "awm_monotone", "awm_neglog10p", "awm_mlp", *RIVALS)


def roc_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """AUC, pAUC (FPR <= 0.05, normalised), TPR at FPR <= 1% and = 0, separation margin."""
    s = np.nan_to_num(np.asarray([np.nan if x is None else x for x in scores], float))
    pos, neg = s[labels == 1], s[labels == 0]
    if not len(pos) or not len(neg):
        return {}
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    thresholds = np.unique(np.concatenate([s, [np.inf]]))[::-1]
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.array([(neg >= t).mean() for t in thresholds])

    def tpr_at(limit: float) -> float:
        ok = fpr <= limit + 1e-12
        return float(tpr[ok].max()) if ok.any() else 0.0

    grid = np.linspace(0, 0.05, 501)
    # ROC as a step function (the most conservative reading of ties): TPR reached at each FPR.
    steps = np.array([tpr[fpr <= g + 1e-12].max() for g in grid])
    return {
        "auc": float(greater + 0.5 * ties),
        "pauc_fpr05": float(np.trapezoid(steps, grid) / 0.05),
        "tpr_at_fpr01": tpr_at(0.01),
        "tpr_at_fpr0": float((pos > neg.max()).mean()),
        "min_derived": float(pos.min()),
        "max_independent": float(neg.max()),
        "positives": int(len(pos)),
        "negatives": int(len(neg)),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def lineage_chain(models: dict, name: str) -> list[str]:
    chain = [name]
    while models[chain[-1]].get("parent"):
        chain.append(models[chain[-1]]["parent"])
    return chain


def derived_category(models: dict, a: str, b: str) -> str:
    """The kinds on the path between two related models (``sft``, ``sft+dpo``, ``siblings: ...``)."""
    ca, cb = lineage_chain(models, a), lineage_chain(models, b)
    for lo, hi in ((a, b), (b, a)):
        chain = lineage_chain(models, lo)
        if hi in chain:
            kinds = [models[m]["kind"] for m in chain[: chain.index(hi)]]
            return "+".join(reversed(kinds))
    common = next(m for m in ca if m in cb)
    left = [models[m]["kind"] for m in ca[: ca.index(common)]]
    right = [models[m]["kind"] for m in cb[: cb.index(common)]]
    return "siblings: " + " | ".join(sorted(["+".join(reversed(left)), "+".join(reversed(right))]))


def score_pair(a: Path, b: Path) -> dict:
    out = {}
    for name, fn in RIVALS.items():
        try:
            out[name] = fn(str(a), str(b))
        except awm_jax.AWMError:
            out[name] = float("nan")
    try:
        r = awm_jax.compare(a, b, mlp=True)
    except awm_jax.AWMError as e:  # refused (e.g. too little evidence to align): no AWM score at all
        nan = float("nan")
        out.update({m: nan for m in METHODS if m.startswith("awm")}, awm_z=nan, awm_wq=nan, awm_wk=nan, awm_p=None,
                   verdict="refused", reference_verdict="refused", paper_verdict="refused", alignment_used="",
                   rotation_tried=False, refused=str(e))
        return out
    p = r.calibrated["p_value"]
    out.update(awm=r.mean, awm_z=r.z_reference, awm_wq=r.wq, awm_wk=r.wk, awm_mlp=r.mlp, awm_p=p,
               awm_neglog10p=float("nan") if p is None else float(-np.log10(max(p, 1e-300))),
               verdict=r.verdict, reference_verdict=r.reference_verdict, alignment_used=r.alignment["used"],
               rotation_tried=r.alignment.get("probe_rotation") is not None)
    out["awm_permutation"] = awm_jax.compare(a, b, alignment="assignment").mean
    paper = awm_jax.compare(a, b, **PAPER)  # the reference's computation
    out["awm_paper"], out["paper_verdict"] = paper.mean, paper.verdict
    out["awm_monotone"] = awm_jax.compare(a, b, layer_match="monotone").mean
    return out


def run_set(name: str, root: Path, pairs: list[dict], models: dict, category) -> dict:
    """Scores every pair; ``models`` maps names to manifest entries (``folder``), ``category(pair)``
    names a derived pair's category."""
    rows = []
    t = time.perf_counter()
    for i, p in enumerate(pairs):
        row = {"a": p["a"], "b": p["b"], "label": p["label"],
               **score_pair(root / models[p["a"]]["folder"], root / models[p["b"]]["folder"])}
        if p["label"] == "derived":
            row["category"] = category(p)
        rows.append(row)
        if (i + 1) % 25 == 0:
            print(f"[{name}] {i + 1}/{len(pairs)} pairs, {time.perf_counter() - t:.0f}s", flush=True)
    labels = np.array([1 if r["label"] == "derived" else 0 if r["label"] == "independent" else -1 for r in rows])
    keep = labels >= 0
    metrics = {m: roc_metrics(np.array([r[m] for r in rows])[keep], labels[keep]) for m in METHODS}
    apart = defaultdict(list)
    for r in rows:
        if r["label"] not in ("derived", "independent"):
            apart[r["label"]].append({m: r[m] for m in ("a", "b", *METHODS)})
    cats = defaultdict(list)
    for r in rows:
        if r["label"] == "derived":
            cats[r["category"]].append(r)
    verdicts = {}
    for label in ("derived", "independent", "shared-init", "distilled"):
        sel = [r for r in rows if r["label"] == label]
        if sel:
            verdicts[label] = {
                "pairs": len(sel),
                "calibrated": {v: sum(r["verdict"] == v for r in sel) for v in ("derived", "inconclusive", "independent")},
                "refused": sum(r["verdict"] == "refused" for r in sel),
                "reference": {v: sum(r["reference_verdict"] == v for r in sel) for v in ("derived", "inconclusive", "independent")},
                "p_below_0.01": sum(r["awm_p"] is not None and r["awm_p"] < 0.01 for r in sel),
                "p_below_1e-6": sum(r["awm_p"] is not None and r["awm_p"] < 1e-6 for r in sel),
                "no_p_value": sum(r["awm_p"] is None for r in sel),
                "paper": {v: sum(r["paper_verdict"] == v for r in sel) for v in ("derived", "inconclusive", "independent")},
                "rotation_tried": sum(r["rotation_tried"] for r in sel),
                "rotation_used": sum(r["alignment_used"] == "orthogonal" for r in sel),
            }
    per_category = {c: {"pairs": len(v), "awm_mean": float(np.mean([r["awm"] for r in v])),
                        "awm_min": float(np.min([r["awm"] for r in v])),
                        "awm_z_min": float(np.min([r["awm_z"] for r in v])),
                        "awm_monotone_min": float(np.min([r["awm_monotone"] for r in v])),
                        "awm_permutation_min": float(np.min([r["awm_permutation"] for r in v])),
                        "max_p": max((r["awm_p"] for r in v if r["awm_p"] is not None), default=None)}
                    for c, v in sorted(cats.items())}
    return {"pairs": rows, "metrics": metrics, "verdicts": verdicts, "reported_apart": dict(apart), "per_category": per_category,
            "seconds": time.perf_counter() - t}


#: Where the generated part of the Markdown starts (prose above it in an existing file is kept).
GENERATED = "Produced by `python -m benchmarks.lineage"


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown(results: dict, command: str) -> str:
    lines = ["# Lineage benchmark", "", f"Produced by `{command}` on {results['machine']} ({results['date']}).", ""]
    for set_name, res in results["sets"].items():
        m0 = next(iter(res["metrics"].values()))
        lines += [f"## {set_name}: {m0.get('positives', 0)} derived vs {m0.get('negatives', 0)} independent pairs", "",
                  "| method | AUC | pAUC (FPR<=5%) | TPR@FPR<=1% | TPR@FPR=0 | lowest derived | highest independent |",
                  "|---|---|---|---|---|---|---|"]
        for m, v in res["metrics"].items():
            if v:
                lines.append(f"| {m} | {v['auc']:.3f} | {v['pauc_fpr05']:.3f} | {v['tpr_at_fpr01']:.3f} | "
                             f"{v['tpr_at_fpr0']:.3f} | {v['min_derived']:.4f} | {v['max_independent']:.4f} |")
        lines += ["", "Verdicts (derived / inconclusive / independent): the default's calibrated cross-layer null, the "
                  "paper mode's calibrated null, the published reference z; the default's p-values and alignment:", "",
                  "| label | pairs | default, calibrated | paper mode, calibrated | reference z "
                  "| p < 0.01 | p < 1e-6 | no p-value | rotation tried / used |", "|---|---|---|---|---|---|---|---|---|"]
        for label, v in res["verdicts"].items():
            c, pm, r = v["calibrated"], v["paper"], v["reference"]
            lines.append(f"| {label} | {v['pairs']} | {c['derived']} / {c['inconclusive']} / {c['independent']} | "
                         f"{pm['derived']} / {pm['inconclusive']} / {pm['independent']} | "
                         f"{r['derived']} / {r['inconclusive']} / {r['independent']} | {v['p_below_0.01']} | "
                         f"{v['p_below_1e-6']} | {v['no_p_value']} | {v['rotation_tried']} / {v['rotation_used']} |")
        lines += ["", "Derived pairs by category (AWM mean score, default mode; z against the published reference):", "",
                  "| category | pairs | mean score | lowest score | lowest z | lowest (monotone) | lowest (permutation) | largest p |",
                  "|---|---|---|---|---|---|---|---|"]
        for c, v in res["per_category"].items():
            maxp = "n/a" if v["max_p"] is None else f"{v['max_p']:.1e}"
            lines.append(f"| {c} | {v['pairs']} | {v['awm_mean']:.4f} | {v['awm_min']:.4f} | {v['awm_z_min']:.1f} | "
                         f"{v['awm_monotone_min']:.4f} | {v['awm_permutation_min']:.4f} | {maxp} |")
        for label, rows in res["reported_apart"].items():
            lines += ["", f"Reported apart: `{label}` pairs", "", "| a | b | " + " | ".join(METHODS) + " |",
                      "|---|---|" + "---|" * len(METHODS)]
            for r in rows:
                lines.append(f"| {r['a']} | {r['b']} | " + " | ".join(_fmt(r[m]) for m in METHODS) + " |")
        lines.append("")
    return "\n".join(lines)


def plots(results: dict, folder: Path, stem: str = "lineage") -> list[str]:
    """Per set: the ROC curves on a log FPR axis (``awm_jax.plots.roc_axes``) and the scores by pair label."""
    from awm_jax.plots import new_figure, roc_axes, write_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for set_name, res in results["sets"].items():
        fig = new_figure(13, 5)
        axes = fig.subplots(1, 2)
        curves = {f"{m} (AUC {v['auc']:.3f})": v["roc"] for m, v in res["metrics"].items() if v}
        negatives = next((v["negatives"] for v in res["metrics"].values() if v), 0)
        roc_axes(axes[0], curves, negatives, f"ROC, {set_name}")
        labels = ["derived", "independent", "shared-init", "distilled"]
        similarity = [m for m in METHODS if m != "awm_neglog10p" and m in res["metrics"]]  # -log10 p: another scale
        colors = {"derived": "tab:red", "independent": "tab:blue", "shared-init": "tab:orange", "distilled": "tab:purple"}
        for i, m in enumerate(similarity):
            for lab in labels:
                ys = [np.nan_to_num(np.nan if r[m] is None else r[m]) for r in res["pairs"] if r["label"] == lab]
                if ys:
                    xs = i + (labels.index(lab) - 1.5) * 0.18 + np.random.default_rng(i).uniform(-0.05, 0.05, len(ys))
                    axes[1].scatter(xs, ys, s=9, color=colors[lab], label=lab if i == 0 else None, alpha=0.7)
        axes[1].set_xticks(range(len(similarity)), similarity, rotation=20)
        axes[1].set(xlabel="method", ylabel="score", title=f"score by pair label, {set_name}")
        axes[1].axhline(0, color="grey", lw=0.5)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{stem}-{set_name}.png"
        write_figure(fig, path)
        written.append(str(path))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lineage", description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", help="zoo folder holding MANIFEST.json")
    p.add_argument("--wild", default=str(Path(__file__).resolve().parents[2] / "shared" / "wild"))
    p.add_argument("--out", default="benchmarks/results/lineage.json")
    p.add_argument("--docs", default="docs/lineage.md")
    p.add_argument("--plots", default="docs/img", help="folder of the plots, named after --out: STEM-SET.png")
    p.add_argument("--replot", action="store_true", help="only redraw the plots from the results in --out")
    args = p.parse_args(argv)
    if args.replot:
        for path in plots(json.loads(Path(args.out).read_text()), Path(args.plots), Path(args.out).stem):
            print(f"wrote {path}")
        return 0
    sets = {}
    if args.zoo:
        manifest = json.loads((Path(args.zoo) / "MANIFEST.json").read_text())
        models = {m["name"]: m for m in manifest["models"]}
        sets["zoo"] = run_set("zoo", Path(args.zoo), manifest["pairs"], models,
                              lambda pair: derived_category(models, pair["a"], pair["b"]))
    wild = Path(args.wild) / "MANIFEST.json"
    if wild.is_file():
        w = json.loads(wild.read_text())
        sets["wild"] = run_set("wild", Path(args.wild), w["pairs"], {m["name"]: m for m in w["models"]},
                               lambda pair: pair["relation"])
    results = {"machine": f"{platform.machine()}, {platform.platform()}", "date": time.strftime("%Y-%m-%d %H:%M"),
               "awm_jax": awm_jax.__version__, "sets": sets}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    command = "python -m benchmarks.lineage " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
    docs = Path(args.docs)
    text = markdown(results, command.strip())
    if docs.is_file() and GENERATED in docs.read_text():  # keep the prose written above the tables
        text = docs.read_text().split(GENERATED)[0] + text[text.index(GENERATED):]
    docs.write_text(text)
    for path in plots(results, Path(args.plots), Path(args.out).stem):
        print(f"wrote {path}")
    print(f"wrote {args.out} and {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
