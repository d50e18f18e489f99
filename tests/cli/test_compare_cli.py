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


def _compare_on_a_terminal(tmp_path, *args) -> tuple[str, str, int]:
    """Runs the compare command line with stderr on a pseudo-terminal (100 columns) and stdout on
    a pipe; returns (what the terminal showed, stdout, exit code)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "awm_jax", "compare", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        shown += data
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    return shown.decode(errors="replace"), out.decode(), proc.returncode


def test_progress_on_a_terminal_only_and_never_on_stdout(tmp_path, pair):
    shown, out, code = _compare_on_a_terminal(tmp_path, "a", "b", "--json", "-", "--cache-dir", tmp_path / "c")
    assert code == 0
    assert json.loads(out)["verdict"] == "derived"  # stdout is the JSON record alone
    for stage in ("a: fingerprint", "b: fingerprint", "aligning hidden dimensions", "scoring layers"):
        assert stage in shown, shown
    assert "layer/s" in shown or "/3 [" in shown  # a bar over the layers
    shown, out, code = _compare_on_a_terminal(tmp_path, "a", "b", "--cache-dir", tmp_path / "c")
    assert code == 0 and "looking up the cached fingerprint" in shown and "a: fingerprint" not in shown
    assert "\r" not in out and "verdict" in out
    for quiet in ("--quiet", "--no-progress"):
        shown, out, code = _compare_on_a_terminal(tmp_path, "a", "b", quiet, "--cache-dir", tmp_path / "c")
        assert code == 0 and shown == "", shown
    out = run_cli("a", "b", "--cache-dir", tmp_path / "d", cwd=tmp_path)  # stderr a pipe: no progress
    assert out.returncode == 0 and out.stderr == "", out.stderr
