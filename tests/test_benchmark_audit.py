"""The audit benchmark's synthetic model plan, at a micro shape: the real audit must recover its
families exactly (seconds; the benchmark itself runs TinyLlama-shaped models)."""

from awm_jax.audit.core import audit
from benchmarks.audit import plan_models, synthesize
from benchmarks.shapes import Shape


def test_planned_families_are_recovered_by_the_audit(tmp_path):
    shape = Shape("micro", 400, 64, 4, 4, 2, 128)
    members = plan_models(20)  # two families of seven (chains included), six independent models
    paths = {m.name: synthesize(m, shape, tmp_path / "models") for m in members}
    result = audit(paths, cache_dir=tmp_path / "cache")
    expected: dict[int, list[str]] = {}
    for m in members:
        expected.setdefault(m.family, []).append(m.name)
    assert sorted(sorted(f) for f in result.families) == sorted(sorted(f) for f in expected.values())
    assert sum(len(f) > 1 for f in result.families) == 2


def test_report_only_rebuilds_the_json_of_the_audit_already_run(tmp_path):
    import json

    from benchmarks.audit import main

    args = ["--models", "8", "--shape", "tiny-test", "--dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    assert main([*args, "--keep"]) == 0
    (first,) = (tmp_path / "out").glob("audit-*.json")
    run = json.loads(first.read_text())
    first.unlink()
    assert main([*args, "--report-only"]) == 0  # the audit is not run again: its own timings are reported
    again = json.loads(next((tmp_path / "out").glob("audit-*.json")).read_text())
    assert again["report_only"] and again["wall_s"] is None and again["peak_rss_gb"] is None
    for key in ("pairs", "families_exact", "total_s", "pair_phase_s", "per_pair_s", "checked_against_compare"):
        assert again[key] == run[key], key
    assert not (tmp_path / "run").exists()  # reported without --keep: removed
