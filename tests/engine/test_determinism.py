"""Determinism: the same inputs give bit-identical scores in the JSON, across runs and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import random_model, save_llama

ROOT = Path(__file__).resolve().parents[2]

#: Result fields that may differ between runs: wall times, versions, whether the cache was hit.
VOLATILE = ("timings", "environment")


#: One process runs the real CLI three times: an equal-depth pair without cache, a pair of
#: different depths (the layer-assignment path) without cache, and the first pair via the cache.
CHILD = r"""
import sys
from awm_jax.compare import main
a, b, c, cache, out = sys.argv[1:6]
for i, args in enumerate([[a, b, "--no-cache"], [a, c, "--no-cache"], [a, b, "--cache-dir", cache]]):
    code = main(args + ["--device", "cpu", "--quiet", "--json", f"{out}-{i}.json"])
    if code:
        raise SystemExit(code)
"""


def _scores(path: Path) -> dict:
    """Every field of a JSON result but the volatile ones, floats as the exact text the file holds."""
    d = json.loads(path.read_text(), parse_float=str)
    for model in ("model_a", "model_b"):
        d[model].pop("fingerprint_cached")
    return {k: v for k, v in d.items() if k not in VOLATILE}


def test_scores_are_bit_identical_across_processes_and_cache(tmp_path):
    rng = np.random.default_rng(11)
    emb, qs, ks = random_model(rng, vocab=120, hidden=48, layers=3, q_dim=48, k_dim=16)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    noisy = [q + 0.2 * rng.standard_normal(q.shape).astype(np.float32) for q in qs]
    b = save_llama(tmp_path / "b", emb + 0.1 * rng.standard_normal(emb.shape).astype(np.float32), noisy, ks)
    c = save_llama(tmp_path / "c", emb, noisy[:2], ks[:2])
    cache = tmp_path / "cache"  # shared: the first process fills it, the second reads it
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for run in ("first", "second"):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(a), str(b), str(c), str(cache), str(tmp_path / run)],
                              capture_output=True, text=True, check=False, env=env, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-2000:]
    first = [_scores(tmp_path / f"first-{i}.json") for i in range(3)]
    second = [_scores(tmp_path / f"second-{i}.json") for i in range(3)]
    assert first == second  # across processes (the second read its fingerprints from the cache)
    assert first[2] == first[0]  # cached fingerprints give the same scores as uncached ones
    assert first[1]["layer_match"] == "assignment" and len(first[1]["layers"]) == 2
    assert float(first[0]["mean"]) != float(first[1]["mean"])  # two different comparisons, not one repeated
    assert {"wq", "wk", "mean", "z_reference", "verdict", "layers", "alignment"} <= set(first[0])
    assert json.loads((tmp_path / "second-2.json").read_text())["model_a"]["fingerprint_cached"] is True
