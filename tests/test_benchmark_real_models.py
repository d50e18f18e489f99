"""The real-model benchmark's summaries: refused pairs are counted apart, never crash the run."""

import pytest

pytest.importorskip("flax")

from benchmarks import real_models  # noqa: E402


def _row(paper, permutation, default, verdicts=("independent",) * 4):
    means = dict(zip(("paper", "permutation", "default", "orthogonal"), (paper, permutation, default, default)))
    return {s: {"mean": m, "verdict": v, "used": "assignment", "probe_permutation": 0.1}
            for (s, m), v in zip(means.items(), verdicts)}


def test_wild_summary_measures_scored_pairs_and_counts_refused_ones_apart():
    refused = {s: {"refused": "DegenerateAlignment: too few shared tokens"} for s, _ in real_models.SETTINGS}
    rows = [_row(0.03, 0.04, 0.04), _row(0.10, 0.09, 0.12, ("independent", "independent", "inconclusive", "x")),
            refused]
    summary = real_models.wild_summary(rows)
    assert summary["pairs"] == 2 and summary["refused"] == 1
    assert summary["fold_max_rise"] == pytest.approx(0.01)
    assert summary["fold_max_abs_change"] == pytest.approx(0.01)
    assert summary["auto_max_rise"] == pytest.approx(0.03)
    assert summary["verdicts_changed"] == 1
    assert "refused: DegenerateAlignment" in real_models._line("a / b", refused)
    assert real_models.wild_summary([refused]) == {"pairs": 0, "refused": 1}
