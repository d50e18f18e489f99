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
