"""Every bad-input case through the CLI: one line, its exit code, its row of docs/errors.md,
under 10 s, no traceback, nothing written to the model folders (in process, and for the cases
marked so in a real ``python -m awm_jax COMMAND`` subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cases import (CASES, SENTINEL, TIME_LIMIT_S, Case, Outcome, by_name, environment, normalise, prepare, run_in_process,
                    snapshot)
from .table import DOC, parse, render

ROOT = Path(__file__).resolve().parents[2]
DOC_ROWS = parse(DOC.read_text()) if DOC.is_file() else {}
REGENERATE = "docs/errors.md is out of date: python -m tests.bad_input.table > docs/errors.md"


def _check(case: Case, root: Path, outcome: Outcome, before: dict) -> str:
    """Asserts the contract of a bad input; returns the normalised message."""
    assert outcome.code == case.code, outcome.stderr
    assert case.stdout or outcome.stdout == ""
    assert "Traceback" not in outcome.stderr
    assert outcome.stderr.endswith("\n") and outcome.stderr.count("\n") == 1, outcome.stderr
    assert outcome.stderr.startswith("awm_jax: error: ")
    message = normalise(outcome.stderr, root)
    assert case.fragment in message
    assert case.names in message, "the message must name the file"
    assert "; " in message, "the message must say what to do after naming the problem"
    assert outcome.seconds < TIME_LIMIT_S
    assert snapshot(root) == before, "the run changed files under the case folder"
    assert not (root / SENTINEL).exists(), "content of the model folder was executed"
    assert not [p for p in (root / "cache").rglob("*") if p.name.startswith(".tmp")], "temporary files left in the cache"
    return message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_in_process(case: Case, tmp_path: Path):
    args = prepare(case, tmp_path)
    before = snapshot(tmp_path)
    message = _check(case, tmp_path, run_in_process(case, tmp_path, args), before)
    assert DOC_ROWS.get(case.name) == (case.code, message), REGENERATE


@pytest.mark.parametrize("case", [c for c in CASES if c.subprocess and c.inject is None], ids=lambda c: c.name)
def test_case_through_cli_subprocess(case: Case, tmp_path: Path):
    args = prepare(case, tmp_path)
    before = snapshot(tmp_path)
    with environment(case, tmp_path) as variables:
        env = dict(os.environ, PYTHONPATH=str(ROOT), **variables)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "awm_jax", case.command, *args], capture_output=True, text=True,
                              check=False, env=env, stdin=subprocess.DEVNULL, timeout=TIME_LIMIT_S)
        outcome = Outcome(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t)
    assert _check(case, tmp_path, outcome, before) == DOC_ROWS.get(case.name, (None, None))[1], REGENERATE


def test_docs_table_is_current():
    assert DOC.is_file(), REGENERATE
    assert render(DOC_ROWS) == DOC.read_text(), REGENERATE


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_by_mode(tmp_path: Path):
    """Without injection: a real chmod 000 (the corpus injects EACCES, since root ignores modes)."""
    case = by_name("weights_unreadable")
    args = prepare(case, tmp_path)
    (tmp_path / "bad" / "model.safetensors").chmod(0)
    before = snapshot(tmp_path)
    plain = Case(case.name, case.input, case.code, case.fragment, case.names, case.build, command=case.command)
    assert _check(plain, tmp_path, run_in_process(plain, tmp_path, args), before) == DOC_ROWS[case.name][1]
