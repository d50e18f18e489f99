"""``python -m awm_jax.download``: suites and hub ids against the stand-in hub (tests/hub_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from awm_jax.cli.download import expand_targets, main
from awm_jax.errors import UsageError
from awm_jax.io.hub import cached_snapshot, hub_cache_dir
from hub_server import hub, write_tiny_model  # noqa: F401  (hub is a fixture)

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
[suite]
name = "tiny"

[[models]]
key = "a"
repo = "org/a"

[[models]]
key = "b"
repo = "org/b"
revision = "v1"
gated = true

[[pairs]]
a = "a"
b = "b"
label = "derived"
"""


@pytest.fixture
def two_repos(hub, tmp_path):
    hub.add_folder("org/a", write_tiny_model(tmp_path / "a", seed=1))
    hub.add_folder("org/b", write_tiny_model(tmp_path / "b", seed=2), refs=("main", "v1"))
    return hub


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SUITE)
    return path


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); from awm_jax.cli.download import build_parser; build_parser(); "
            "heavy = [m for m in ('huggingface_hub', 'jax', 'numpy') if m in sys.modules]; "
            "print(heavy, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    heavy, seconds = out.rsplit(" ", 1)
    assert heavy == "[]" and float(seconds) < 1.0
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "awm_jax.download", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "SUITE|REPO_ID" in proc.stdout and "sft_pairs" in proc.stdout
    assert time.perf_counter() - start < 5.0


def test_expand_targets_deduplicates_and_flags(suite_file):
    entries = expand_targets([str(suite_file), "org/a", "org/c@refs/pr/3"])
    assert entries == [("org/a", ""), ("org/b@v1", "gated: accept its terms on the hub and log in"), ("org/c@refs/pr/3", "")]
    everything = expand_targets(["all"])
    assert len(everything) == len({spec for spec, _ in everything}) > 60
    with pytest.raises(UsageError, match="not a suite name, suite file or hub id"):
        expand_targets(["a/b/c"])
    with pytest.raises(UsageError, match="unknown suite 'nope'"):
        expand_targets(["nope"])


def test_hub_ids_download_then_come_from_the_cache(two_repos, capsys):
    code, out, err = _run(capsys, ["org/a", "org/b@v1", "--download", "full"])
    assert code == 0, err
    assert "[1/2] org/a: downloading" in out and "[2/2] org/b@v1: done" in out
    assert out.strip().endswith("2 model(s): 2 downloaded, 0 already cached, 0 failed")
    assert cached_snapshot("org/a") is not None and cached_snapshot("org/b@v1") is not None
    before = len(two_repos.log)
    code, out, err = _run(capsys, ["org/a", "org/b@v1", "--download", "full"])
    assert code == 0 and "[1/2] org/a: cached" in out
    assert out.strip().endswith("2 model(s): 0 downloaded, 2 already cached, 0 failed")
    assert len(two_repos.log) == before


def test_suite_file_dry_run_then_download(two_repos, suite_file, capsys, monkeypatch):
    code, out, err = _run(capsys, [str(suite_file), "--dry-run"])
    assert code == 0
    assert "[1/2] org/a: not cached" in out and "org/b@v1: not cached (gated" in out
    assert out.strip().endswith("2 model(s): 0 cached, 2 to download (dry run)")
    assert two_repos.log == []
    monkeypatch.setenv("HF_TOKEN", "hf_valid_token")
    code, out, err = _run(capsys, [str(suite_file)])
    assert code == 0 and "2 downloaded" in out


def test_hub_cache_option(two_repos, tmp_path, capsys):
    code, out, err = _run(capsys, ["org/a", "--hub-cache", str(tmp_path / "elsewhere"), "--download", "full"])
    assert code == 0 and err == ""
    assert cached_snapshot("org/a", tmp_path / "elsewhere") is not None
    assert cached_snapshot("org/a") is None
    assert str(tmp_path / "elsewhere") in out
    code, out, err = _run(capsys, ["org/b@v1", "--hub-cache", str(tmp_path / "elsewhere")])  # partial, the default
    assert code == 0 and "partial" in out
    assert (tmp_path / "elsewhere" / "models--org--b" / "awm_partial").is_dir()
    assert not (hub_cache_dir() / "models--org--b").exists()


def test_a_failure_does_not_stop_the_batch(two_repos, capsys):
    code, out, err = _run(capsys, ["org/missing", "org/a"])
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("awm_jax: error: org/missing: repository not found")
    assert "Traceback" not in err
    assert "[2/2] org/a: done" in out and "1 downloaded, 0 already cached, 1 failed" in out


@pytest.mark.parametrize("argv, code, message", [
    (["nope"], 2, "awm_jax: error: unknown suite 'nope'"),
    (["a/b/c"], 2, "awm_jax: error: a/b/c: not a suite name"),
])
def test_usage_errors(hub, capsys, argv, code, message):
    got, out, err = _run(capsys, argv)
    assert got == code and err.startswith(message) and len(err.strip().splitlines()) == 1
    assert hub.log == []


# Runs the module as ``python -m`` would, refusing (and reporting) any connection beyond loopback.
LOOPBACK_ONLY = """
import runpy, socket, sys
real_connect = socket.socket.connect
def connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        sys.stderr.write(f"BLOCKED {address}\\n")
        raise ConnectionRefusedError(address)
    return real_connect(sock, address)
real_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost"):
        sys.stderr.write(f"BLOCKED {host}\\n")
        raise socket.gaierror(host)
    return real_getaddrinfo(host, *args, **kwargs)
socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
runpy.run_module("awm_jax.download", run_name="__main__", alter_sys=True)
"""


def test_command_line_end_to_end(two_repos, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": two_repos.endpoint, "HF_HOME": str(tmp_path / "cli_home"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", LOOPBACK_ONLY, "org/a", "org/nothere", "--download", "full"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)
    assert "BLOCKED" not in proc.stderr
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("awm_jax: error: org/nothere: repository not found")
    assert "Traceback" not in proc.stderr
    snapshot = hub_cache_dir(tmp_path / "cli_home" / "hub") / "models--org--a" / "snapshots" / two_repos.repos["org/a"].commit
    assert (snapshot / "model.safetensors.index.json").is_file()
    assert cached_snapshot("org/a", tmp_path / "cli_home" / "hub") == snapshot


def test_cache_dir_keeps_its_old_meaning_with_a_deprecation_warning(two_repos, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": two_repos.endpoint, "HF_HOME": str(tmp_path / "cli_home"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
        env.pop(name, None)

    def download(*args):
        return subprocess.run([sys.executable, "-c", LOOPBACK_ONLY, "org/a", *args], capture_output=True, text=True,
                              env=env, timeout=120)

    proc = download("--cache-dir", str(tmp_path / "old"), "--download", "full")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("awm_jax: warning: download --cache-dir"), proc.stderr
    assert "--hub-cache" in proc.stderr
    assert cached_snapshot("org/a", tmp_path / "old") is not None
    assert cached_snapshot("org/a", tmp_path / "cli_home" / "hub") is None
    proc = download("--cache-dir", str(tmp_path / "old"), "--hub-cache", str(tmp_path / "new"))
    assert proc.returncode == 2 and "name different folders" in proc.stderr
