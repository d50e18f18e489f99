"""Audit outputs: score matrices and pairs as CSV and JSON, a heatmap, the lineage tree, a summary.

Files written to the audit folder (each atomically: a temporary name, then ``os.replace``)::

    audit.json            models, matrices (mean, wq, wk, z, verdict), families, every pair in detail
    matrix_<what>.csv     the R x C matrix of mean | wq | wk | z | p | verdict, names on both axes
                          (z: against the published reference; p: the calibrated cross-layer test)
    pairs.csv             one line per pair: scores, verdict, alignment and vocabulary figures
    heatmap.png           the mean-score matrix with the verdict marked in each cell (a full audit
                          in lineage-tree order)
    lineage.png           the single-linkage tree on 1 - score, leaves coloured by family, the
                          cut marked when families come from a score threshold (full audits)
    summary.txt           families found, closest pair across families, weakest link within
    report.html           all of it on one self-contained page (matrix, families, pictures, every
                          pair with its per-layer scores): ``awm_jax.audit.html``
    run.json              timings, devices and versions of the last run (changes run to run)

Everything but ``run.json`` depends on the inputs only, so a resumed audit writes the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from awm_jax.io.atomic import atomic_write
from pathlib import Path

import numpy as np

__all__ = ["write_outputs", "write_run_info", "render_summary", "write_label_check", "OUTPUT_FILES"]

OUTPUT_FILES = ("audit.json", "matrix_mean.csv", "matrix_wq.csv", "matrix_wk.csv", "matrix_z.csv", "matrix_p.csv",
                "matrix_verdict.csv", "pairs.csv", "heatmap.png", "lineage.png", "summary.txt", "report.html", "run.json")


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def _matrix_csv(rows, cols, values, fmt) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model"] + list(cols))
    for name, row in zip(rows, values):
        w.writerow([name] + [fmt(v) for v in row])
    return buf.getvalue().encode()


def _pairs_csv(result) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "mean", "wq", "wk", "z", "p", "verdict", "reference_verdict", "layer_match", "base", "matched_dims", "base_dims",
                "sign_flips", "mean_abs_cos", "shared_rows", "error", "warnings"])
    for p in result.pairs:
        al, vo = p.alignment, p.vocabulary
        w.writerow([p.a, p.b, _num(p.mean), _num(p.wq), _num(p.wk), _num(p.z_reference), _num(p.p_value), p.verdict,
                    p.reference_verdict, p.layer_match,
                    p.base, al.get("matched_dims", ""), al.get("base_dims", ""), al.get("sign_flips", ""),
                    _num(al["mean_abs_cos"]) if "mean_abs_cos" in al else "", vo.get("shared_rows", ""), p.error,
                    " | ".join(p.warnings)])
    return buf.getvalue().encode()


def render_summary(result) -> str:
    """The text summary: families, the closest pair across families, the weakest link within."""
    from awm_jax.audit.lineage_tree import HIGH_SCORE, derived_edges, describe_rule, why_not_joined

    fam_of = {name: i for i, fam in enumerate(result.families) for name in fam}
    lines = [
        f"AWM audit: {len(result.rows)} x {len(result.columns)} "
        f"({'against references' if result.against else 'all pairs'}), {len(result.pairs)} pairs",
        f"family rule: {describe_rule(result.family_rule, sum(1 for p in result.pairs if not p.error))}",
        "",
    ]
    multi = [f for f in result.families if len(f) > 1]
    single = [f[0] for f in result.families if len(f) == 1]
    lines.append(f"{len(multi)} famil{'y' if len(multi) == 1 else 'ies'} of 2+ models, {len(single)} model(s) without "
                 "a derived partner")
    for n, fam in enumerate(multi, 1):
        inside = [p for p in result.pairs if p.a in fam and p.b in fam and math.isfinite(p.mean)]
        links = f", within-pair scores {min(p.mean for p in inside):.4f} .. {max(p.mean for p in inside):.4f}" if inside else ""
        lines.append(f"  family {n} ({len(fam)} models{links}): {', '.join(fam)}")
    if single:
        lines.append(f"  no derived partner: {', '.join(single)}")
    across = [p for p in result.pairs if fam_of[p.a] != fam_of[p.b] and math.isfinite(p.mean)]
    if across:
        top = max(across, key=lambda p: p.mean)
        lines.append("")
        lines.append(f"closest pair across families: {top.a} / {top.b}: mean {top.mean:.6f}, z {top.z_reference:.2f}, "
                     f"p {top.p_value:.3g}, {top.verdict}")
    scored = sum(1 for p in result.pairs if not p.error)
    edges = derived_edges(result.pairs, result.family_rule)
    high = [p for p, edge in zip(result.pairs, edges) if not edge and not p.error and p.mean >= HIGH_SCORE]
    if high:
        lines.append("")
        lines.append(f"high-scoring pairs (mean >= {HIGH_SCORE:g}) not joined by the family rule, and why:")
        lines += [f"  {p.a} / {p.b}: mean {p.mean:.4f}: {why_not_joined(p, result.family_rule, scored)}"
                  for p in sorted(high, key=lambda p: -p.mean)[:20]]
    if result.against:
        lines.append("")
        for name in result.rows:
            hits = sorted((p for p in result.pairs if p.a == name and p.verdict == "derived"), key=lambda p: -p.mean)
            found = ", ".join(f"{p.b} ({p.mean:.4f})" for p in hits) or "none"
            lines.append(f"  {name}: same lineage as {found}")
    unscored = [p for p in result.pairs if p.error]
    if unscored:
        lines.append("")
        lines.append(f"{len(unscored)} pair(s) could not be scored:")
        lines += [f"  {p.a} / {p.b}: {p.error}" for p in unscored[:20]]
    warnings = sorted({w for p in result.pairs for w in p.warnings})
    if warnings:
        lines.append("")
        lines += [f"note: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _plots(result) -> dict[str, bytes]:
    """``heatmap.png`` and, for a full audit of 2+ models, ``lineage.png`` (:mod:`awm_jax.plots`)."""
    from awm_jax.audit.lineage_tree import leaf_order, lineage_linkage
    from awm_jax.plots import audit_heatmap, figure_bytes, lineage_figure

    out = {}
    rows, cols, mean, verdict = list(result.rows), list(result.columns), result.mean.copy(), result.verdict
    link = None
    if not result.against and len(rows) >= 2:
        link = lineage_linkage(mean)
        order = leaf_order(link)[::-1]  # top to bottom as the tree draws its leaves
        rows = cols = [rows[i] for i in order]
        mean, verdict = mean[np.ix_(order, order)], verdict[np.ix_(order, order)]
        np.fill_diagonal(mean, 1.0)
    out["heatmap.png"] = figure_bytes(audit_heatmap(rows, cols, mean, verdict, result.against))
    if link is not None:
        threshold = None if isinstance(result.family_rule, str) else float(result.family_rule)
        out["lineage.png"] = figure_bytes(lineage_figure(list(result.rows), link, result.families, threshold))
    return out


def write_outputs(result, out_dir: str | os.PathLike) -> None:
    """Writes every output file but ``run.json`` (see the module docstring)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"audit.json": (json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n").encode()}
    for what in ("mean", "wq", "wk", "z", "p"):
        files[f"matrix_{what}.csv"] = _matrix_csv(result.rows, result.columns, getattr(result, what), _num)
    files["matrix_verdict.csv"] = _matrix_csv(result.rows, result.columns, result.verdict, str)
    files["pairs.csv"] = _pairs_csv(result)
    from awm_jax.audit.html import render_html

    summary = render_summary(result)
    files["summary.txt"] = summary.encode()
    images = _plots(result)
    files.update(images)
    files["report.html"] = render_html(result, images, summary).encode()
    for name, data in files.items():
        atomic_write(folder / name, data)


def write_run_info(result, out_dir: str | os.PathLike) -> None:
    """Writes ``run.json``: timings, devices and versions of this run."""
    payload = {"timings": result.timings, "environment": result.environment}
    atomic_write(Path(out_dir) / "run.json", (json.dumps(payload, indent=1, default=str) + "\n").encode())


def write_label_check(result, labelled: list[tuple[str, str, str]], out_dir: str | os.PathLike) -> str:
    """Compares the verdicts with known labels (a suite's pairs); writes ``labels.csv``.

    Args:
      result: the audit.
      labelled: ``(a, b, label)`` with label ``derived`` or ``independent``.
      out_dir: the audit folder.

    Returns:
      A one-line summary (how many labelled pairs got the matching verdict).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "label", "verdict", "mean", "p", "agrees"])
    agree = {"derived": [0, 0], "independent": [0, 0]}
    for a, b, label in labelled:
        p = result.pair(a, b)
        ok = p.verdict == label
        agree[label][0] += ok
        agree[label][1] += 1
        w.writerow([a, b, label, p.verdict, _num(p.mean), _num(p.p_value), "yes" if ok else "no"])
    atomic_write(Path(out_dir) / "labels.csv", buf.getvalue().encode())
    return (f"labelled pairs: derived found derived {agree['derived'][0]}/{agree['derived'][1]}, "
            f"independent found independent {agree['independent'][0]}/{agree['independent'][1]}")

