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


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_of_the_example_pairs_through_the_package_command(tmp_path):
    """``python -m awm_jax compare --example --plot``: one panel per pair, a valid PNG."""
    out = subprocess.run([sys.executable, "-m", "awm_jax", "compare", "--example", "--no-cache", "--quiet",
                          "--plot", "layers.png"], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr
    width, height = _png_size((tmp_path / "layers.png").read_bytes())
    assert height > width  # two panels stacked
    assert not [p.name for p in tmp_path.iterdir() if p.name != "layers.png"]  # no temporary file left


def test_plot_draws_the_layers_the_null_band_and_the_verdict(tmp_path, pair):
    """The figure ``--plot`` writes holds each matched layer's Wq and Wk, the band of the mismatched
    layer pairs, and the verdict, p and mean in the title (checked on the figure, then the file)."""
    from awm_jax.engine import compare
    from awm_jax.plots import layer_figure

    a, b = pair
    r = compare(a, b, cache=False)
    fig = layer_figure([("A a vs B b", r)])
    (ax,) = fig.axes
    assert "DERIVED" in ax.get_title() and f"{r.mean:.4f}" in ax.get_title() and "p " in ax.get_title()
    assert ax.get_xlabel() == "layer of model A" and ax.get_ylabel() == "unbiased CKA"
    lines = {l.get_label(): l for l in ax.get_lines()}
    wq, wk = lines["Wq, matched layers"], lines["Wk, matched layers"]
    assert list(wq.get_xdata()) == [l.a_layer for l in r.layers]
    np.testing.assert_allclose(wq.get_ydata(), [l.wq for l in r.layers], rtol=0, atol=0)
    np.testing.assert_allclose(wk.get_ydata(), [l.wk for l in r.layers], rtol=0, atol=0)
    band = [p for p in ax.patches if p.get_label().startswith("mismatched layer pairs, 5-95%")]
    assert len(band) == 1
    ys = band[0].get_patch_transform().transform(band[0].get_path().vertices)[:, 1]  # data y (a Rectangle or Polygon)
    np.testing.assert_allclose([ys.min(), ys.max()], [r.calibrated["mismatched_low"], r.calibrated["mismatched_high"]],
                               rtol=0, atol=1e-12)
    from awm_jax.numerics.statistics import verdict_bounds

    derived_above = [l for l in ax.get_lines() if l.get_label().startswith("mean above this: derived")]
    bound = verdict_bounds(r.calibrated["null_mean"], r.calibrated["null_std"]).derived_above
    assert len(derived_above) == 1 and derived_above[0].get_ydata()[0] == bound and r.mean > bound
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("mismatched layer pairs, mean") for t in legend)
    assert main([str(a), str(b), "--no-cache", "--quiet", "--plot", str(tmp_path / "p.svg")]) == 0
    svg = (tmp_path / "p.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "DERIVED" in svg


@pytest.mark.parametrize(
    "plot, text",
    [
        ("layers.txt", "unknown picture format .txt"),
        ("layers", "no file suffix"),
        ("nodir/layers.png", "does not exist"),
        ("afile/layers.png", "Not a directory"),
        ("adir.png", "is a folder"),
    ],
)
def test_bad_plot_paths_fail_before_any_work(tmp_path, capsys, monkeypatch, plot, text):
    """A bad --plot path is a usage error (exit 2, one line) found before the models are read:
    the missing model B would otherwise be the error (exit 3)."""
    from awm_jax.cli.compare import EXAMPLES

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir.png").mkdir()
    assert main([str(EXAMPLES / "base"), "missing", "--no-cache", "--plot", plot]) == 2
    err = capsys.readouterr().err
    assert err.startswith("awm_jax: error: --plot") and text in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "afile"]


def test_failing_input_with_plot_writes_no_picture(tmp_path, capsys):
    """A pair that cannot be scored fails with its own clean error and leaves no picture behind."""
    rng = np.random.default_rng(1)
    emb, qs, ks = random_model(rng)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    b = save_llama(tmp_path / "b", emb, qs, ks, tokens=[f"other{i}" for i in range(emb.shape[0])])
    assert main([str(a), str(b), "--no-cache", "--plot", str(tmp_path / "p.png")]) == 5
    err = capsys.readouterr().err
    assert "share no tokens" in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()


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
