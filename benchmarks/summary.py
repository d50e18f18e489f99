"""Markdown tables of the benchmark results: ``python -m benchmarks.summary [pair|audit]``.

Reads ``benchmarks/results/pair-*.json`` (written by ``python -m benchmarks.pair``) and
``benchmarks/results/audit-*.json`` (written by ``python -m benchmarks.audit``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["tinyllama-1.1b", "llama-2-7b", "llama-3-8b", "llama-2-70b-4layers"]


def pair_tables() -> None:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("pair-*.json"))]
    runs.sort(key=lambda r: (r["machine"].get("model", ""), ORDER.index(r["shape"]["name"])
                             if r["shape"]["name"] in ORDER else 99))
    print("| shape | device | CPU | cold wall | warm wall | peak RSS cold / warm | floor (read + compute) | cold / floor "
          "| straightforward wall (RSS) | straightforward / cold | load at start |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        f, c, w, n = r["floor"], r["cold"], r["warm"], r["straightforward"]
        naive = f"{n['wall_s']:.1f} s ({n['peak_rss_mb'] / 1024:.1f} GB)" if n else "not run"
        ratio = f"{r['ratios']['straightforward_over_cold']:.2f}x" if n else "-"
        print(f"| {r['shape']['name']} | {r['machine']['device']} | {r['machine'].get('model', '?')} | {c['wall_s']:.1f} s | {w['wall_s']:.1f} s | "
              f"{c['peak_rss_mb'] / 1024:.2f} / {w['peak_rss_mb'] / 1024:.2f} GB | {f['floor_s']:.1f} s "
              f"({f['read_floor_s']:.1f} + {f['compute_floor_s']:.1f}; {f['matmul_gflops']:.0f} GFLOP/s) | "
              f"{r['ratios']['cold_over_floor']:.2f} | {naive} | {ratio} | {r.get('load_average_at_start', ['?'])[0]:.2f} |")
    print()
    print("Stages (seconds, cold / warm):")
    print()
    keys = ["open_s", "embedding_read_s", "embedding_cosine_s", "assignment_s", "weights_read_s", "gram_s", "scores_s", "compile_s"]
    print("| shape | CPU | " + " | ".join(k.removesuffix("_s") for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in runs:
        cells = [f"{r['cold']['timings'].get(k, 0):.1f} / {r['warm']['timings'].get(k, 0):.1f}" for k in keys]
        print(f"| {r['shape']['name']} | {r['machine'].get('model', '?')} | " + " | ".join(cells) + " |")


def audit_table() -> None:
    runs = [json.loads(p.read_text()) for p in RESULTS.glob("audit-*.json")]
    runs.sort(key=lambda r: (r["machine"].get("model", ""), r["models"]))
    print("| CPU | models | pairs | total | fingerprints | pair stages (share) | per pair | peak RSS | `--memory-gb` "
          "| families | vs `compare` | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        b, pairs = r["breakdown_s"], r["pairs"]
        # Per-pair stage names of the engine; results written before it used cosine_s / cka_s.
        cosine, scores = b.get("embedding_cosine_s", b.get("cosine_s", 0.0)), b.get("scores_s", b.get("cka_s", 0.0))
        checked = r["checked_against_compare"]
        diff = max(c["max_abs_diff"] for c in checked)
        rss = "not measured" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f} GB"
        print(f"| {r['machine'].get('model', '?')} | {r['models']} | {pairs} | {r['total_s']:.0f} s | {r['fingerprint_s']:.0f} s "
              f"({r['per_model_fingerprint_s']:.1f} s/model) | {r['pair_phase_s']:.0f} s "
              f"({100 * r['pair_phase_share']:.0f}%) | {r['per_pair_s']:.1f} s: cosine {cosine / pairs:.1f}, "
              f"CKA {scores / pairs:.1f} | {rss} | {r['memory_gb_budget']:.0f} GB | "
              f"{r['families_found']} of {r['families_expected']}, {'exact' if r['families_exact'] else 'NOT exact'} | "
              f"{len(checked)} pairs, diff {diff:g} | {r['machine']['load_before'][0]:.1f} |")


TABLES = {"pair": pair_tables, "audit": audit_table}


def main(argv=None) -> int:
    which = (argv if argv is not None else sys.argv[1:]) or list(TABLES)
    unknown = [name for name in which if name not in TABLES]
    if unknown:
        print(f"unknown table {unknown[0]!r}: choose from {', '.join(TABLES)}", file=sys.stderr)
        return 2
    for i, name in enumerate(which):
        if i:
            print()
        TABLES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
