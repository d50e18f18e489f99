"""Every picture awm_jax draws: a pair's layer profile, the audit heatmap and lineage tree.

matplotlib is imported only when a picture is drawn, and figures are built on
:class:`matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``: no global
figure state, no GUI backend, safe from threads, and a notebook's own backend is left alone.
Figures are rendered without time stamps or version strings, so equal inputs give equal bytes
(a resumed audit writes the same files as an uninterrupted one).

Pictures:

* :func:`layer_figure`: per-layer Wq and Wk scores of one or more pairs against the band of the
  pair's mismatched layer pairs (the calibrated null behind the verdict), ``compare --plot``.
* :func:`audit_heatmap`: the mean-score matrix of an audit with the verdict marked in each cell.
* :func:`lineage_figure`: the audit's single-linkage lineage tree, leaves coloured by family.
* :func:`roc_axes`: ROC curves on a log false-positive-rate axis (the lineage benchmark).
"""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np

__all__ = [
    "PLOT_FORMATS",
    "VERDICT_MARKS",
    "audit_heatmap",
    "figure_bytes",
    "format_p",
    "layer_figure",
    "lineage_figure",
    "new_figure",
    "roc_axes",
    "write_figure",
]

#: File suffixes a picture may be written as (matplotlib chooses the format from it).
PLOT_FORMATS = ("png", "svg", "pdf")
#: How a verdict is marked in a heatmap cell (independent pairs are left blank).
VERDICT_MARKS = {"derived": "D", "inconclusive": "?", "independent": "", "unscored": "x", "self": ""}
_MARK_LEGEND = "cells: D derived, ? inconclusive, blank independent, x not scored"
#: Metadata that would make the bytes differ run to run or version to version, removed.
_NO_STAMPS = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
              "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


def new_figure(width: float, height: float):
    """An empty :class:`matplotlib.figure.Figure` of ``width x height`` inches (Agg canvas, no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def figure_bytes(fig, fmt: str = "png", dpi: int = 120) -> bytes:
    """The figure rendered as ``fmt`` (one of :data:`PLOT_FORMATS`), without time stamps."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=_NO_STAMPS[fmt])
    return buf.getvalue()


def write_figure(fig, path: str | os.PathLike) -> None:
    """Writes the figure atomically to ``path`` in the format its suffix names (a symlink is
    written through to its file, as ``--json`` does)."""
    from awm_jax.io.atomic import atomic_write

    fmt = os.fspath(path).rsplit(".", 1)[-1].lower()
    atomic_write(path, figure_bytes(fig, fmt), follow_symlinks=True)


def format_p(p: float | None) -> str:
    """A calibrated p-value for a label: ``n/a`` without one, ``< 1e-300`` when it underflowed."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3g}" if p > 0 else "< 1e-300"


# --- a pair's layer profile ----------------------------------------------------------------------


def _finite(c: dict, key: str) -> float | None:
    v = c.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _layer_axes(ax, label: str, r) -> None:
    """One pair's panel: Wq, Wk (and MLP) per matched layer, the mismatched band, the means."""
    ax.set_title(f"{label}\nverdict {r.verdict.upper()}, p {format_p(r.p_value)}, mean {r.mean:.4f}", fontsize=10)
    ax.set_xlabel("layer of model A" + ("" if r.layer_match in ("equal-depth", "") else
                                        f" (paired with B's layer shown below it: {r.layer_match} matching)"))
    ax.set_ylabel("unbiased CKA")
    if not r.layers:
        ax.text(0.5, 0.5, "not scored", ha="center", va="center", transform=ax.transAxes)
        return
    xs = [l.a_layer for l in r.layers]
    c = r.calibrated
    low, high, null = (_finite(c, k) for k in ("mismatched_low", "mismatched_high", "mismatched_mean"))
    if low is not None and high is not None:
        role = ": the verdict's null" if r.layer_match == "equal-depth" and math.isfinite(r.p_value) else ""
        ax.axhspan(low, high, color="tab:grey", alpha=0.25, lw=0,
                   label=f"mismatched layer pairs, 5-95% ({c.get('mismatched_pairs', 0)} pairs{role})")
    if null is not None:
        ax.axhline(null, color="tab:grey", ls="--", lw=1, label=f"mismatched layer pairs, mean {null:.4f}")
    ax.axhline(r.mean, color="black", ls=":", lw=1, label=f"matched layers, mean of Wq and Wk {r.mean:.4f}")
    null_mean, null_std = _finite(c, "null_mean"), _finite(c, "null_std")
    bounds = None
    if null_mean is not None and null_std is not None:  # the verdict's thresholds for that mean
        from awm_jax.numerics.statistics import (CALIBRATED_ALPHA, CALIBRATED_INDEPENDENT_P, CALIBRATED_MIN_EFFECT,
                                                 verdict_bounds)

        bounds = verdict_bounds(null_mean, null_std)
        ax.axhline(bounds.derived_above, color="tab:red", ls="-.", lw=1,
                   label=f"mean above this: derived (p < {CALIBRATED_ALPHA:g}, effect >= {CALIBRATED_MIN_EFFECT:g})")
        ax.axhline(bounds.independent_below, color="tab:green", ls="-.", lw=1,
                   label=f"mean below this: independent (p > {CALIBRATED_INDEPENDENT_P:g})")
    ax.plot(xs, [l.wq for l in r.layers], "o-", color="tab:blue", ms=4, label="Wq, matched layers")
    ax.plot(xs, [l.wk for l in r.layers], "s-", color="tab:orange", ms=4, label="Wk, matched layers")
    if any(l.mlp is not None for l in r.layers):
        ax.plot(xs, [np.nan if l.mlp is None else l.mlp for l in r.layers], "^-", color="tab:green", ms=4,
                label="MLP inputs (beside the verdict)")
    if r.layer_match not in ("equal-depth", "") and len(xs) <= 48:
        ax.set_xticks(xs, [f"{l.a_layer}\n{l.b_layer}" for l in r.layers], fontsize=7)
    elif len(xs) <= 48:
        ax.set_xticks(xs)
        ax.tick_params(axis="x", labelsize=7)
    scores = [v for l in r.layers for v in (l.wq, l.wk, l.mlp) if v is not None and math.isfinite(v)]
    lines = [x for x in (low, *(bounds or ())) if x is not None]
    ax.set_ylim(min(0.0, *scores, *lines) - 0.05, min(1.5, max(1.0, *lines)) + 0.05)
    ax.grid(True, axis="y", lw=0.5, alpha=0.5)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)


def layer_figure(pairs: Sequence[tuple[str, object]]):
    """Per-layer scores of each pair against its mismatched layers, one panel per pair.

    Args:
      pairs: ``(label, result)`` with ``result`` a :class:`~awm_jax.report.PairResult` (a
        ``CompareResult`` or an audit cell): its ``layers``, ``calibrated`` (the band from
        ``mismatched_low``/``mismatched_high``/``mismatched_mean``; left out when a record has
        none), ``verdict``, ``p_value`` and ``mean`` are drawn.

    Returns:
      A :class:`matplotlib.figure.Figure`.
    """
    fig = new_figure(8.0, 4.2 * len(pairs))
    axes = fig.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, (label, r) in zip(axes, pairs):
        _layer_axes(ax, label, r)
    fig.tight_layout()
    return fig


# --- audit pictures --------------------------------------------------------------------------------


def audit_heatmap(rows: Sequence[str], columns: Sequence[str], mean: np.ndarray, verdict: np.ndarray, against: bool):
    """The mean-score matrix with each cell's verdict marked (:data:`VERDICT_MARKS`).

    Args:
      rows: ``R`` row model names, in the order to draw.
      columns: ``C`` column names.
      mean: ``[R, C]`` mean scores (NaN: not scored).
      verdict: ``[R, C]`` verdicts (``"self"`` on a full audit's diagonal).
      against: ``N x M`` mode (rows audited against reference columns) rather than all pairs.
    """
    from matplotlib.colors import to_rgb

    size = max(4.0, 0.18 * max(len(rows), len(columns)) + 2.5)
    fig = new_figure(size + 1.6, size + 0.4)
    ax = fig.subplots()
    vmin = min(0.0, float(np.nanmin(mean))) if np.isfinite(mean).any() else 0.0
    im = ax.imshow(np.ma.masked_invalid(mean), vmin=vmin, vmax=1.0, cmap="viridis")
    fontsize = max(4, min(9, int(400 / max(len(rows), len(columns), 1))))
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(rows)), rows, fontsize=fontsize)
    if against:
        ax.set_xlabel(f"reference models (--against), {len(columns)}\n{_MARK_LEGEND}")
        ax.set_ylabel(f"audited models, {len(rows)}")
    else:
        ax.set_xlabel(f"model B, {len(columns)} (lineage-tree order)\n{_MARK_LEGEND}")
        ax.set_ylabel(f"model A, {len(rows)} (lineage-tree order)")
    mark_size = max(3, min(10, int(300 / max(len(rows), len(columns), 1))))
    for (i, j), v in np.ndenumerate(verdict):
        mark = VERDICT_MARKS.get(str(v), "")
        if mark:
            rgb = to_rgb(im.cmap(im.norm(mean[i, j]))) if math.isfinite(mean[i, j]) else (1.0, 1.0, 1.0)
            dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
            ax.text(j, i, mark, ha="center", va="center", fontsize=mark_size, fontweight="bold",
                    color="white" if dark else "black")
    ax.set_title("AWM mean score and verdict" + (" (rows against references)" if against else " (all pairs)"))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean score (Wq + Wk) / 2")
    fig.tight_layout()
    return fig


def lineage_figure(names: Sequence[str], link: np.ndarray, families: Sequence[Sequence[str]], threshold: float | None):
    """The single-linkage lineage tree (``audit.lineage_tree.lineage_linkage``), leaves and
    links inside one family coloured by family; the cut drawn when families come from a score
    threshold.

    Args:
      names: model names (leaf ``i`` of ``link`` is ``names[i]``).
      link: ``[n - 1, 4]`` scipy linkage matrix on ``1 - score``.
      families: the audit's families (families of one are drawn grey).
      threshold: the family score threshold, or ``None`` for a test-based family rule.
    """
    import matplotlib
    from scipy.cluster.hierarchy import dendrogram

    palette = matplotlib.colormaps["tab10"]
    family_of = {name: i for i, fam in enumerate(f for f in families if len(f) > 1) for name in fam}
    alone = {name: -1 - i for i, name in enumerate(names)}  # a model in no family of 2+: its own key
    members = {i: {names[i]} for i in range(len(names))}
    for c, (a, b, _, _) in enumerate(link, start=len(names)):
        members[c] = members[int(a)] | members[int(b)]

    def link_colour(c: int) -> str:  # a link inside one family takes the family's colour
        fams = {family_of.get(name, alone[name]) for name in members[c]}
        fam = fams.pop() if len(fams) == 1 else -1
        return matplotlib.colors.to_hex(palette(fam % 10)) if fam >= 0 else "grey"

    fontsize = max(4, min(9, int(400 / max(len(names), 1))))
    fig = new_figure(8.0, max(3.0, 0.2 * len(names) + 1.5))
    ax = fig.subplots()
    dendrogram(link, labels=list(names), orientation="left", ax=ax, leaf_font_size=fontsize, link_color_func=link_colour)
    for label in ax.get_ymajorticklabels():
        if label.get_text() in family_of:
            label.set_color(palette(family_of[label.get_text()] % 10))
    if threshold is not None:
        ax.axvline(1.0 - threshold, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("1 - mean score (single linkage); labels coloured by family"
                  + ("; dashed: family cut" if threshold is not None else ""))
    ax.set_title(f"Lineage tree: {sum(len(f) > 1 for f in families)} families")
    fig.tight_layout()
    return fig


def roc_axes(ax, curves: dict[str, dict], negatives: int, title: str) -> None:
    """ROC curves on a log false-positive-rate axis, where the low-FPR end a verdict lives at is
    readable (on a linear axis every good method hugs the corner).

    An FPR of 0 has no place on a log axis: it is drawn at ``1 / (2 * negatives)``, half the
    smallest FPR the negatives can give, and marked so; the dotted line is one false positive.

    Args:
      ax: the axes to draw on.
      curves: label -> ``{"fpr": [...], "tpr": [...]}`` (thresholds descending, steps).
      negatives: how many negative pairs are behind the curves.
      title: the axes title.
    """
    floor = 1.0 / (2 * max(1, negatives))
    for label, roc in curves.items():
        fpr = np.maximum(np.asarray(roc["fpr"], float), floor)
        ax.plot(fpr, roc["tpr"], drawstyle="steps-post", label=label)
    ax.set_xscale("log")
    ax.set_xlim(floor / 1.3, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.axvline(1.0 / max(1, negatives), color="grey", ls=":", lw=1)
    ax.set_xlabel(f"false positive rate (log; {negatives} negatives, dotted: one false positive, "
                  "FPR 0 drawn at the left edge)", fontsize=8)
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(True, which="major", lw=0.5, alpha=0.5)
    ax.legend(loc="lower right", fontsize=8)
