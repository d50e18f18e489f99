"""``python -m awm_jax.zoo`` without the zoo extra: one line saying what to install, exit code 2.

Runs whether or not the extra is installed: the extra's modules are made unimportable in the
child process (``sys.modules[name] = None``, what Python does for a module known to be absent).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from awm_jax.zoo import EXTRA_PACKAGES, missing_extra

REPO = Path(__file__).resolve().parents[2]
MESSAGE = 'awm_jax: error: the lineage zoo needs the zoo extra: pip install "awm_jax[zoo]"'


def run_zoo_without(modules: list[str], *args: str) -> subprocess.CompletedProcess:
    """``python -m awm_jax.zoo ARGS`` in a child process where ``modules`` cannot be imported."""
    script = ("import runpy, sys\n"
              f"for name in {modules!r}:\n"
              "    sys.modules[name] = None\n"
              f"sys.argv = ['awm_jax.zoo', *{list(args)!r}]\n"
              "runpy.run_module('awm_jax.zoo', run_name='__main__', alter_sys=True)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args", [("build", "--micro"), ("examples",), ("status",), ("--help",)])
def test_every_command_names_the_extra(args):
    proc = run_zoo_without(list(EXTRA_PACKAGES.values()), *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == f"{MESSAGE} (not installed: {', '.join(EXTRA_PACKAGES)})"


def test_names_only_the_missing_packages():
    proc = run_zoo_without(["PIL"], "status")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{MESSAGE} (not installed: pillow)"


def test_missing_extra_in_this_process(monkeypatch):
    for module in EXTRA_PACKAGES.values():
        monkeypatch.setitem(sys.modules, module, None)
    assert missing_extra() == list(EXTRA_PACKAGES)
