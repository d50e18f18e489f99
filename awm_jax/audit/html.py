"""The audit's HTML report (``report.html``): one self-contained page to read an audit in.

The page holds the score matrix (each cell coloured by its mean score, with the score and the
verdict's mark, linked to the pair), the families, the heatmap and lineage tree, a table of
every pair, and a drill-down per pair: its scores, the calibrated test and its null, alignment
and vocabulary figures, warnings, and its per-layer scores (layers scoring above the band of
the pair's mismatched layers marked), with the layer picture of ``compare --plot`` for up to
:data:`MAX_PAIR_FIGURES` pairs (derived first, then inconclusive, then by mean score).

Self-contained: inline CSS, pictures embedded as ``data:`` URIs, no scripts, no link that
leaves the page, so it opens offline and can be mailed or archived as one file. Equal inputs
give equal bytes (a resumed audit writes the same report).
"""

from __future__ import annotations

import base64
import html
import math

from awm_jax.plots import VERDICT_MARKS, figure_bytes, format_p, layer_figure

__all__ = ["MAX_PAIR_FIGURES", "render_html"]

#: Pairs whose drill-down carries a layer picture (every pair of a small audit); the others
#: show their per-layer table only (a picture costs about 40 kB and 0.3 s on a 2-core CPU: a
#: 64-model audit's report, 2016 pairs of 22 layers, takes about 25 s and 11 MB).
MAX_PAIR_FIGURES = 60

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #1b1b1b; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { padding: 0.2em 0.45em; border: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } th.name, td.name { text-align: left; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
table.matrix td { text-align: center; min-width: 3.2em; border: 1px solid #fff; }
table.matrix td a { color: inherit; text-decoration: none; display: block; }
table.matrix th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
.mark { display: block; font-weight: bold; font-size: 1.1em; min-height: 1.1em; }
td.self { background: #eee; color: #999; }
.v-derived { color: #b00020; font-weight: bold; } .v-inconclusive { color: #a05a00; font-weight: bold; }
.v-independent { color: #1b5e20; } .v-unscored { color: #777; }
tr.above td.mean { background: #ffe9c7; }
section.pair { border: 1px solid #ddd; border-radius: 6px; padding: 0.3em 1em 1em; margin: 1em 0; }
section.pair:target { border-color: #1565c0; box-shadow: 0 0 0 2px #90caf9; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; font-size: 0.9em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
img { max-width: 100%; height: auto; } figure { margin: 1em 0; }
.note { color: #555; font-size: 0.9em; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _anchor(k: int) -> str:
    return f"pair-{k}"


def _colour(value: float, vmin: float) -> tuple[str, str]:
    """Background and text colour of a matrix cell (the heatmap's viridis scale)."""
    import matplotlib
    from matplotlib.colors import to_hex, to_rgb

    if not math.isfinite(value):
        return "#ffffff", "#777777"
    frac = min(1.0, max(0.0, (value - vmin) / (1.0 - vmin))) if vmin < 1.0 else 1.0
    rgb = to_rgb(matplotlib.colormaps["viridis"](frac))
    dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
    return to_hex(rgb), "#ffffff" if dark else "#000000"


def _matrix(result, index: dict) -> list[str]:
    import numpy as np

    rows, cols = list(result.rows), list(result.columns)
    if not result.against:  # families contiguous, first-member order
        rows = cols = [name for fam in result.families for name in fam]
    pos_r = {n: i for i, n in enumerate(result.rows)}
    pos_c = {n: i for i, n in enumerate(result.columns)}
    finite = result.mean[np.isfinite(result.mean)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    out = ['<div class="scroll"><table class="matrix">',
           '<thead><tr><th class="name">' + ("audited \\ reference" if result.against else "model A \\ model B") + "</th>"]
    out += [f'<th class="col" scope="col">{_e(c)}</th>' for c in cols]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cells = [f'<tr><th class="name" scope="row">{_e(r)}</th>']
        for c in cols:
            i, j = pos_r[r], pos_c[c]
            verdict = str(result.verdict[i, j])
            if verdict == "self":
                cells.append('<td class="self">&#8212;</td>')
                continue
            value = float(result.mean[i, j])
            bg, fg = _colour(value, vmin)
            k = index[(r, c)]
            title = f"{r} / {c}: mean {_num(value)}, p {format_p(float(result.p[i, j]))}, {verdict}"
            cells.append(f'<td style="background:{bg};color:{fg}" title="{_e(title)}"><a href="#{_anchor(k)}">'
                         f'{_num(value, 3)}<span class="mark">{_e(VERDICT_MARKS.get(verdict, "")) or "&#160;"}'
                         "</span></a></td>")
        out.append("".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    out.append('<p class="note">Colour: mean score (Wq + Wk) / 2 on the heatmap\'s scale. Mark: D derived, '
               "? inconclusive, blank independent, x not scored. Each cell links to its pair.</p>")
    return out


def _families(result, summary: str) -> list[str]:
    multi = [f for f in result.families if len(f) > 1]
    single = [f[0] for f in result.families if len(f) == 1]
    out = [f"<p>{len(multi)} famil{'y' if len(multi) == 1 else 'ies'} of 2+ models, {len(single)} model(s) "
           "without a derived partner.</p>"]
    if multi:
        out.append("<ol>" + "".join(f"<li>{_e(', '.join(f))}</li>" for f in multi) + "</ol>")
    if single:
        out.append(f"<p>No derived partner: {_e(', '.join(single))}</p>")
    out.append(f"<details><summary>Text summary (summary.txt)</summary><pre>{_e(summary)}</pre></details>")
    return out


def _pair_table(result) -> list[str]:
    out = ['<div class="scroll"><table class="pairs"><thead><tr><th class="name">A</th><th class="name">B</th>'
           "<th>mean</th><th>Wq</th><th>Wk</th><th>p</th><th>reference z</th><th class=\"name\">verdict</th>"
           "</tr></thead><tbody>"]
    for k, p in enumerate(result.pairs):
        out.append(f'<tr><td class="name"><a href="#{_anchor(k)}">{_e(p.a)}</a></td><td class="name">{_e(p.b)}</td>'
                   f"<td>{_num(p.mean)}</td><td>{_num(p.wq)}</td><td>{_num(p.wk)}</td><td>{_e(format_p(p.p_value))}</td>"
                   f'<td>{_num(p.z_reference, 2)}</td><td class="name v-{_e(p.verdict)}">{_e(p.verdict)}</td></tr>')
    out.append("</tbody></table></div>")
    return out


def _figure_pairs(result) -> set[int]:
    """The pairs whose drill-down carries a layer picture (:data:`MAX_PAIR_FIGURES`)."""
    rank = {"derived": 0, "inconclusive": 1}
    scored = [k for k, p in enumerate(result.pairs) if p.layers]
    scored.sort(key=lambda k: (rank.get(result.pairs[k].verdict, 2), -result.pairs[k].mean, k))
    return set(scored[:MAX_PAIR_FIGURES])


def _bounds(c: dict) -> str:
    """Where the matched mean changes the verdict, for a test with a null (``verdict_bounds``)."""
    from awm_jax.numerics.statistics import verdict_bounds

    mean, std = c.get("null_mean"), c.get("null_std")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (mean, std)):
        return ""
    b = verdict_bounds(mean, std)
    return f"; the matched mean is derived above {b.derived_above:.4f}, independent below {b.independent_below:.4f}"


def _facts(p) -> list[str]:
    c, al, vo = p.calibrated, p.alignment, p.vocabulary
    facts = [("verdict", f'<span class="v-{_e(p.verdict)}">{_e(p.verdict.upper())}</span>'),
             ("rule", _e(p.verdict_rule or "n/a"))]
    if p.error:
        facts.append(("not scored", _e(p.error)))
    else:
        facts += [
            ("mean / Wq / Wk", f"{_num(p.mean, 6)} / {_num(p.wq, 6)} / {_num(p.wk, 6)}"),
            *([("MLP inputs", _num(p.mlp, 6))] if p.mlp is not None else []),
            ("calibrated p", f"{_e(format_p(p.p_value))} (z {_num(c.get('z'), 2)}; {_e(c.get('method', ''))})"),
            ("null of the mean", f"{_num(c.get('null_mean'))} &#177; {_num(c.get('null_std'))}" + _bounds(c)),
            ("mismatched layer pairs", f"mean {_num(c.get('mismatched_mean'))}, 5-95% band "
                                       f"{_num(c.get('mismatched_low'))} .. {_num(c.get('mismatched_high'))} "
                                       f"({_e(c.get('mismatched_pairs', 'n/a'))} pairs)"),
            ("reference z", f"{_num(p.z_reference, 2)} ({_e(p.reference_verdict)}; signed, vs the published "
                            "independent 7B/13B pairs)"),
            ("layers", f"{_e(p.layer_match)}, base model {_e(p.base.upper())}"),
            ("alignment", _e(f"{al.get('used', 'n/a')} ({al.get('reason', '')}); {al.get('matched_dims', '?')}/"
                             f"{al.get('base_dims', '?')} dims matched, {al.get('sign_flips', '?')} sign flips, "
                             f"mean |cos| {_num(al.get('mean_abs_cos'))}; norm gains {al.get('norm_gains', 'ignore')}")),
            ("vocabulary", _e(f"{vo.get('shared_rows', '?')} shared tokens")),
        ]
    facts += [("warning", _e(w)) for w in p.warnings]
    return ['<dl class="facts">'] + [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts] + ["</dl>"]


def _layers(p) -> list[str]:
    high = p.calibrated.get("mismatched_high")
    mlp = any(l.mlp is not None for l in p.layers)
    out = ['<table class="layers"><thead><tr><th>layer A</th><th>layer B</th><th>Wq</th><th>Wk</th><th>mean</th>'
           + ("<th>MLP</th>" if mlp else "") + "</tr></thead><tbody>"]
    for l in p.layers:
        above = ' class="above"' if isinstance(high, (int, float)) and l.mean > high else ""
        out.append(f'<tr{above}><td>{l.a_layer}</td><td>{l.b_layer}</td><td>{_num(l.wq)}</td>'
                   f'<td>{_num(l.wk)}</td><td class="mean">{_num(l.mean)}</td>'
                   + (f"<td>{_num(l.mlp)}</td>" if mlp else "") + "</tr>")
    out.append("</tbody></table>")
    if isinstance(high, (int, float)):
        out.append(f'<p class="note">Shaded: layers whose mean score is above the 95th percentile ({_num(high)}) of the '
                   "pair's mismatched layer pairs.</p>")
    return out


def _drilldown(result) -> list[str]:
    drawn = _figure_pairs(result)
    out = []
    if len(drawn) < sum(1 for p in result.pairs if p.layers):
        out.append(f'<p class="note">Layer pictures for {len(drawn)} pairs (derived first, then inconclusive, then by '
                   "mean score); every pair has its per-layer table.</p>")
    for k, p in enumerate(result.pairs):
        out.append(f'<section class="pair" id="{_anchor(k)}"><h3>{_e(p.a)} / {_e(p.b)}: '
                   f'<span class="v-{_e(p.verdict)}">{_e(p.verdict)}</span></h3>')
        out += _facts(p)
        if p.layers:
            out += _layers(p)
        if k in drawn:
            png = figure_bytes(layer_figure([(f"A {p.a} vs B {p.b}", p)]), dpi=80)
            out.append(f'<figure><img src="{_data_uri(png)}" alt="per-layer scores of {_e(p.a)} / {_e(p.b)} against '
                       'the band of its mismatched layer pairs"></figure>')
        out.append('<p><a href="#matrix">back to the matrix</a></p></section>')
    return out


def render_html(result, images: dict[str, bytes], summary: str) -> str:
    """The audit report as one self-contained HTML page.

    Args:
      result: the :class:`~awm_jax.audit.records.AuditResult`.
      images: PNG bytes by file name (``heatmap.png``, ``lineage.png`` when drawn) to embed.
      summary: the text summary (``summary.txt``).
    """
    index = {}
    for k, p in enumerate(result.pairs):
        index[(p.a, p.b)] = k
        index.setdefault((p.b, p.a), k)
    mode = "rows against references" if result.against else "all pairs"
    opts = ", ".join(f"{k} {v}" for k, v in sorted(result.options.items()))
    title = f"AWM audit: {len(result.rows)} x {len(result.columns)} ({mode})"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f'<p class="note">{len(result.pairs)} pairs; pair options: {_e(opts)}. Verdicts: the calibrated '
             "cross-layer test of each pair (its matched layers against its mismatched ones).</p>",
             '<nav><a href="#matrix">Matrix</a><a href="#families">Families</a><a href="#pictures">Pictures</a>'
             '<a href="#pairs">Pairs</a></nav>',
             '<section id="matrix"><h2>Mean score and verdict</h2>', *_matrix(result, index), "</section>",
             '<section id="families"><h2>Families</h2>', *_families(result, summary), "</section>",
             '<section id="pictures"><h2>Pictures</h2>']
    captions = {"heatmap.png": "Mean score with the verdict marked in each cell", "lineage.png": "Lineage tree"}
    for name, caption in captions.items():
        if name in images:
            parts.append(f'<figure><img src="{_data_uri(images[name])}" alt="{_e(caption)}">'
                         f"<figcaption>{_e(caption)} ({_e(name)})</figcaption></figure>")
    parts += ["</section>", '<section id="pairs"><h2>Pairs</h2>', *_pair_table(result), *_drilldown(result),
              "</section></body></html>"]
    return "\n".join(parts) + "\n"
