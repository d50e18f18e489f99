"""The benchmark tables the docs quote: ``python -m benchmarks.summary [pair|audit]``."""

import json

from benchmarks import summary


def _audit_result(models: int) -> dict:
    pairs = models * (models - 1) // 2
    return {
        "models": models, "pairs": pairs, "total_s": 100.0, "fingerprint_s": 10.0, "pair_phase_s": 90.0,
        "pair_phase_share": 0.9, "per_pair_s": 90.0 / pairs, "per_model_fingerprint_s": 10.0 / models,
        "breakdown_s": {"cosine_s": 40.0, "cka_s": 30.0}, "peak_rss_gb": 1.5, "memory_gb_budget": 2.0,
        "families_found": 1, "families_expected": 1, "families_exact": models != 6,
        "checked_against_compare": [{"max_abs_diff": 0.0}, {"max_abs_diff": 2e-9}],
        "machine": {"load_before": [0.5, 0.5, 0.5], "model": "Some CPU"},
    }


def test_audit_table_has_one_row_per_result_in_model_order(tmp_path, monkeypatch, capsys):
    for models in (12, 6):
        (tmp_path / f"audit-x-{models}-cpu.json").write_text(json.dumps(_audit_result(models)))
    monkeypatch.setattr(summary, "RESULTS", tmp_path)
    assert summary.main(["audit"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| Some CPU", "6"], ["| Some CPU", "12"]]
    assert "1 of 1, NOT exact" in rows[0] and "1 of 1, exact" in rows[1]
    assert "90 s (90%)" in rows[1] and "2 pairs, diff 2e-09" in rows[1]
    assert "cosine 2.7, CKA 2.0" in rows[0]  # 40 s and 30 s over 15 pairs


def test_unknown_table_is_refused(capsys):
    assert summary.main(["pairs"]) == 2
    assert "choose from pair, audit" in capsys.readouterr().err
