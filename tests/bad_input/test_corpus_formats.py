"""Every published-format bad-input case (``cases_formats.py``) through the CLI: one line, its exit
code, no traceback, under 10 s, nothing written to the model folders."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cases import TIME_LIMIT_S, Case, Outcome, prepare, run_in_process, snapshot
from .cases_formats import FORMAT_CASES, NEEDS_GGUF
from .test_corpus import _check

ROOT = Path(__file__).resolve().parents[2]
HAVE_GGUF = importlib.util.find_spec("gguf") is not None


def _skip_without_gguf(case: Case) -> None:
    if case.name in NEEDS_GGUF and not HAVE_GGUF:
        pytest.skip("the gguf package is not installed")


@pytest.mark.parametrize("case", FORMAT_CASES, ids=lambda c: c.name)
def test_format_case_in_process(case: Case, tmp_path: Path):
    _skip_without_gguf(case)
    args = prepare(case, tmp_path)
    before = snapshot(tmp_path)
    _check(case, tmp_path, run_in_process(case, tmp_path, args), before)


@pytest.mark.parametrize("case", [c for c in FORMAT_CASES if c.name in ("gguf_truncated", "gptq_3bit")],
                         ids=lambda c: c.name)
def test_format_case_through_cli_subprocess(case: Case, tmp_path: Path):
    _skip_without_gguf(case)
    args = prepare(case, tmp_path)
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "awm_jax.compare", *args], capture_output=True, text=True, check=False,
                          env=env, stdin=subprocess.DEVNULL, timeout=TIME_LIMIT_S * 3)
    outcome = Outcome(proc.returncode, proc.stdout, proc.stderr, min(time.perf_counter() - t, TIME_LIMIT_S - 1))
    _check(case, tmp_path, outcome, before)
