"""Markdown table of the pair benchmark results: ``python -m benchmarks.summary``.

Reads ``benchmarks/results/pair-*.json`` (written by ``python -m benchmarks.pair``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["tinyllama-1.1b", "llama-2-7b", "llama-3-8b", "llama-2-70b-4layers"]


def main() -> int:
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("pair-*.json"))]
    runs.sort(key=lambda r: ORDER.index(r["shape"]["name"]) if r["shape"]["name"] in ORDER else 99)
    print("| shape | device | cold wall | warm wall | peak RSS cold / warm | floor (read + compute) | cold / floor "
          "| straightforward wall (RSS) | straightforward / cold | load at start |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        f, c, w, n = r["floor"], r["cold"], r["warm"], r["straightforward"]
        naive = f"{n['wall_s']:.1f} s ({n['peak_rss_mb'] / 1024:.1f} GB)" if n else "not run"
        ratio = f"{r['ratios']['straightforward_over_cold']:.2f}x" if n else "-"
        print(f"| {r['shape']['name']} | {r['machine']['device']} | {c['wall_s']:.1f} s | {w['wall_s']:.1f} s | "
              f"{c['peak_rss_mb'] / 1024:.2f} / {w['peak_rss_mb'] / 1024:.2f} GB | {f['floor_s']:.1f} s "
              f"({f['read_floor_s']:.1f} + {f['compute_floor_s']:.1f}; {f['matmul_gflops']:.0f} GFLOP/s) | "
              f"{r['ratios']['cold_over_floor']:.2f} | {naive} | {ratio} | {r.get('load_average_at_start', ['?'])[0]:.2f} |")
    print()
    print("Stages (seconds, cold / warm):")
    print()
    keys = ["open_s", "embedding_read_s", "embedding_cosine_s", "assignment_s", "weights_read_s", "gram_s", "scores_s", "compile_s"]
    print("| shape | " + " | ".join(k.removesuffix("_s") for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for r in runs:
        cells = [f"{r['cold']['timings'].get(k, 0):.1f} / {r['warm']['timings'].get(k, 0):.1f}" for k in keys]
        print(f"| {r['shape']['name']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
