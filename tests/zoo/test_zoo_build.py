"""The micro zoo builds quickly, writes a complete manifest and resumes without work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo.build import build_plan, default_cache_dir
from awm_jax.zoo.checkpoint import CHECKPOINT_FILES, Checkpoint
from awm_jax.zoo.plans import micro_plan

from .zoo_helpers import logits

#: Budget of the micro zoo on a 2-core machine, in CPU seconds of this process (all threads),
#: so that other load on the machine does not fail the test; wall time gets 3x as a guard.
MICRO_BUDGET_S = 60.0


def test_micro_zoo_builds_within_budget(micro_zoo):
    cache, report, cpu_seconds, wall_seconds = micro_zoo
    assert cpu_seconds < MICRO_BUDGET_S, f"micro zoo took {cpu_seconds:.1f} CPU seconds"
    assert wall_seconds < 3 * MICRO_BUDGET_S, f"micro zoo took {wall_seconds:.1f}s wall"
    names = [m.name for m in micro_plan().models]
    assert report.built == names and report.skipped == []
    for name in names:
        folder = cache / "models" / name
        assert all((folder / f).is_file() for f in CHECKPOINT_FILES)
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["tie_word_embeddings"] is False


def test_manifest(micro_zoo):
    cache = micro_zoo[0]
    m = json.loads((cache / "MANIFEST.json").read_text())
    assert m["complete"] and m["plan"] == "micro"
    assert [r["name"] for r in m["models"]] == [r.name for r in micro_plan().models]
    assert m["counts"] == {"derived": 3, "distilled": 0, "shared-init": 0, "independent": 3}
    by_pair = {(p["a"], p["b"]): p["label"] for p in m["pairs"]}
    assert by_pair[("micro-base", "micro-base-sft")] == "derived"
    assert by_pair[("micro-base", "micro-indep")] == "independent"
    rec = {r["name"]: r for r in m["models"]}
    assert rec["micro-base"]["shapes"]["embed_tokens"] == [320, 32]
    assert rec["micro-base-sft"]["parent"] == "micro-base"
    assert rec["micro-base"]["info"]["train"]["loss_last"] < rec["micro-base"]["info"]["train"]["loss_first"]
    for t in m["tokenizers"]:
        assert (cache / t["file"]).is_file()


def test_micro_manipulation_preserves_function(micro_zoo):
    cache = micro_zoo[0]
    base = Checkpoint.load(cache / "models" / "micro-base")
    combo = Checkpoint.load(cache / "models" / "micro-base-combo")
    ids = np.random.default_rng(0).integers(3, 320, (2, 17)).astype(np.int32)
    a = logits(base.cfg, base.state_dict(), ids)
    b = logits(combo.cfg, combo.state_dict(), ids)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
    assert np.abs(combo.state_dict()["model.embed_tokens.weight"]
                  - base.state_dict()["model.embed_tokens.weight"]).max() > 1e-3


def test_second_build_does_no_work(micro_zoo):
    cache = micro_zoo[0]
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "models").rglob("*") if p.is_file()}
    start = time.perf_counter()
    report = build_plan(micro_plan(), cache, progress=False, log=lambda s: None)
    assert report.built == [] and len(report.skipped) == 4
    assert time.perf_counter() - start < 10.0
    assert stamps == {p: p.stat().st_mtime_ns for p in (cache / "models").rglob("*") if p.is_file()}


def test_resume_rebuilds_only_what_is_missing(micro_zoo, tmp_path):
    cache = micro_zoo[0]
    copy = tmp_path / "zoo"
    shutil.copytree(cache, copy)
    shutil.rmtree(copy / "models" / "micro-base-combo")
    (copy / "models" / "micro-indep" / "zoo_record.json").write_text("{truncated")
    report = build_plan(micro_plan(), copy, progress=False, log=lambda s: None)
    assert sorted(report.built) == ["micro-base-combo", "micro-indep"]
    assert json.loads((copy / "MANIFEST.json").read_text())["complete"]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AWM_ZOO_DIR", str(tmp_path / "z"))
    assert default_cache_dir() == tmp_path / "z"
    assert default_cache_dir("micro") == tmp_path / "z-micro"
    monkeypatch.delenv("AWM_ZOO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "awm_jax" / "zoo"


def test_cli_help_is_fast_and_status_reports(micro_zoo):
    cache = micro_zoo[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "awm_jax.zoo", "--help"], capture_output=True,
                         text=True, env=env, check=True)
    assert "build" in out.stdout and time.perf_counter() - start < 15.0
    out = subprocess.run([sys.executable, "-m", "awm_jax.zoo", "status", "--cache", str(cache)],
                         capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout)["counts"]["derived"] == 3
    bad = subprocess.run([sys.executable, "-m", "awm_jax.zoo", "status", "--cache",
                          str(cache / "nope")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "build" in bad.stderr and "Traceback" not in bad.stderr
