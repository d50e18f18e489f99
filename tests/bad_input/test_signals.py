"""Ctrl-C at any moment of a real command-line run: exit 130 and one line, or (if it came too
late) the normal exit 0; never a traceback, a crash, an ignored interrupt or a half-written file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "awm_jax" / "examples"


def _interrupt(argv: list[str], delay: float, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "awm_jax", *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # an ignored interrupt: the run went on (or hung)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 60 s after Ctrl-C at {delay} s: {err[-500:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _before_awm_jax(run: subprocess.CompletedProcess) -> bool:
    """Whether the interrupt came during the interpreter's own start-up, before the command's entry
    point ran (site packages, runpy locating the module, the package's ``__init__``, which installs no
    signal handler since it is also the library's): nothing of awm_jax can handle it there. On a
    loaded machine start-up can take longer than the shortest delays."""
    frames = [line for line in run.stderr.splitlines() if line.startswith("  File ")]
    package_init = f"{os.sep}awm_jax{os.sep}__init__.py"
    return (run.returncode in (1, -signal.SIGINT) and run.stderr.rstrip().endswith("KeyboardInterrupt")
            and not any(f"{os.sep}awm_jax{os.sep}" in line and package_init not in line for line in frames))


def _check_compare(tmp_path: Path, delay: float) -> int:
    result = tmp_path / "result.json"
    run = _interrupt(["compare", "--example", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--json", str(result)],
                     delay, tmp_path)
    context = f"Ctrl-C at {delay} s: rc {run.returncode}, stderr {run.stderr!r}"
    if _before_awm_jax(run):
        return -2
    assert run.returncode in (130, 0), context
    if run.returncode == 130:
        assert run.stderr == "awm_jax: interrupted\n", context
        assert not result.exists() or json.loads(result.read_text())["pairs"], context
    else:
        assert run.stderr == "" and len(json.loads(result.read_text())["pairs"]) == 2, context
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".result.json.")], "temporary file left"
    return run.returncode


@pytest.mark.parametrize("delay", [0.1, 0.4, 0.8, 1.5, 2.5])
def test_ctrl_c_during_compare(tmp_path, delay):
    _check_compare(tmp_path, delay)


@pytest.mark.slow
def test_ctrl_c_sweep_over_the_first_seconds(tmp_path):
    """Many tries over the phases of a run (start-up, JAX import, compilation, scoring, output)."""
    codes = []
    for i, delay in enumerate([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0] * 3):
        folder = tmp_path / f"try{i}"
        folder.mkdir()
        codes.append(_check_compare(folder, delay))
    assert codes.count(130) >= len(codes) // 2  # most tries landed before the run finished
    assert codes.count(-2) <= 3  # an interrupt during the interpreter's start-up: rare even under load


@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0])
def test_ctrl_c_during_an_audit(tmp_path, delay):
    out = tmp_path / "out"
    models = [str(EXAMPLES / name) for name in ("base", "derived", "independent")]
    run = _interrupt(["audit", *models, "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")],
                     delay, tmp_path)
    context = f"Ctrl-C at {delay} s: rc {run.returncode}, stderr {run.stderr!r}"
    if _before_awm_jax(run):
        return
    assert run.returncode in (130, 0), context
    if run.returncode == 130:
        assert run.stderr == "awm_jax: interrupted; rerun the same command to resume\n", context
    else:
        assert run.stderr == "", context
    if out.exists():
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary file left in --out"
        for name in ("audit.json", "run.json"):
            if (out / name).exists():
                json.loads((out / name).read_text())  # complete, never half-written


def test_ctrl_c_while_the_main_thread_is_blocked(tmp_path):
    """The watcher thread exits even when the main thread cannot run Python code (here: SIGINT is
    blocked in the main thread, so only the watcher's thread can receive it)."""
    script = (
        "import signal, time\n"
        "from awm_jax.cli._interrupt import exit_on_interrupt\n"
        "with exit_on_interrupt('stopped'):\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    assert proc.stdout.readline() == "ready\n"
    t = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err == "awm_jax: stopped\n"
    assert time.perf_counter() - t < 5


def test_the_handler_is_removed_after_an_in_process_run():
    from awm_jax.errors import run_cli

    before = signal.getsignal(signal.SIGINT)
    assert run_cli(lambda: 0) == 0
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup descriptor left behind
