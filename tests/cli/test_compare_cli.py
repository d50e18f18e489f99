"""The command line: help speed, exit codes, JSON output, one-line errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from awm_jax.cli.compare import main
from conftest import random_model, save_llama

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "awm_jax.compare", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_help_is_fast_and_does_not_import_jax():
    t = time.perf_counter()
    out = run_cli("--help")
    assert out.returncode == 0 and "MODEL_A" in out.stdout.upper()
    assert time.perf_counter() - t < 1.0
    code = "import sys, awm_jax.compare; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT))).returncode == 0


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    emb, qs, ks = random_model(rng)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    b = save_llama(tmp_path / "b", emb, [q + 0.1 * rng.standard_normal(q.shape).astype(np.float32) for q in qs], ks)
    return a, b


def test_relative_paths_json_and_text(tmp_path, pair):
    out = run_cli("a", "b", "--json", "out.json", "--no-cache", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "verdict" in out.stdout and "DERIVED" in out.stdout
    d = json.loads((tmp_path / "out.json").read_text())
    assert d["verdict"] == "derived" and d["model_a"]["path"] == str((tmp_path / "a").resolve())


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["a", "missing"], 3, "no such file or folder"),
        (["a"], 2, "give two model folders"),
        (["a", "b", "--device", "tpu"], 2, "JAX sees no tpu"),
        (["a", "b", "--layout", "nonsense"], 2, "unknown layout"),
        (["a", "b", "--json", "nodir/x.json"], 2, "does not exist"),
    ],
)
def test_user_errors_are_one_line_with_exit_code(tmp_path, pair, capsys, monkeypatch, args, code, text):
    monkeypatch.chdir(tmp_path)
    assert main(args + ["--no-cache"]) == code
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1 and "Traceback" not in err


def test_no_shared_vocabulary_and_nan_weights(tmp_path, capsys):
    rng = np.random.default_rng(1)
    emb, qs, ks = random_model(rng)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    b = save_llama(tmp_path / "b", emb, qs, ks, tokens=[f"other{i}" for i in range(emb.shape[0])])
    assert main([str(a), str(b), "--no-cache"]) == 5
    assert "share no tokens" in capsys.readouterr().err
    bad = [q.copy() for q in qs]
    bad[1][0, 0] = np.nan
    c = save_llama(tmp_path / "c", emb, bad, ks)
    assert main([str(a), str(c), "--no-cache"]) == 6
    err = capsys.readouterr().err
    assert "NaN" in err and "q_proj" in err


def test_example_command_runs():
    out = run_cli("--example", "--quiet", "--no-cache")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("derived") and lines[1].startswith("independent")
    assert all("\tp " in line and "\tz " not in line for line in lines)  # the calibrated p, not the reference z


def test_json_dash_writes_the_record_to_stdout_and_creates_no_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "awm_jax.compare", "--example", "--no-cache", "--json", "-"],
                         capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert [p["format"] for p in record["pairs"]] == ["awm_jax.compare/2"] * 2
    assert [p["verdict"] for p in record["pairs"]] == ["derived", "independent"]
    assert not (tmp_path / "-").exists()


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("awm_jax ")


@pytest.mark.parametrize("command", ["compare", "audit", "download", "scan", "catalogue"])
def test_every_command_prints_its_version(command):
    from awm_jax._version import __version__

    out = subprocess.run([sys.executable, "-m", "awm_jax", command, "--version"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and out.stdout.strip() == f"awm_jax {__version__}", out.stderr


def test_fail_on_gates_ci_on_the_verdict():
    from awm_jax.cli.common import FOUND_EXIT
    from awm_jax.cli.compare import EXAMPLES

    base, derived, independent = (str(EXAMPLES / n) for n in ("base", "derived", "independent"))
    assert main([base, derived, "--quiet", "--fail-on", "derived"]) == FOUND_EXIT
    assert main([base, independent, "--quiet", "--fail-on", "derived"]) == 0
    assert main([base, derived, "--quiet"]) == 0


def test_paper_flag_is_the_papers_computation(capsys):
    from awm_jax.cli.compare import EXAMPLES

    base, derived = str(EXAMPLES / "base"), str(EXAMPLES / "derived")
    records = {}
    for name, flags in {"default": [], "paper": ["--paper"], "spelled": ["--alignment", "assignment",
                                                                         "--norm-gains", "ignore"]}.items():
        assert main([base, derived, "--no-cache", "--json", "-", *flags]) == 0
        records[name] = json.loads(capsys.readouterr().out)  # one pair: its record
    assert records["default"]["alignment"]["mode"] == "auto"
    assert records["default"]["alignment"]["norm_gains"] == "fold"
    paper = records["paper"]["alignment"]
    assert paper["mode"] == "assignment" and paper["norm_gains"] == "ignore"
    assert records["paper"]["mean"] == records["spelled"]["mean"]
