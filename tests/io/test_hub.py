"""awm_jax.io.hub: resolving hub ids against a stand-in hub on loopback (tests/hub_server.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.errors import CheckpointError, UsageError
from awm_jax.io._network import NetworkLimits
from awm_jax.io.hub import HubId, cached_snapshot, hub_cache_dir, parse_hub_id, resolve_model, select_files
from hub_server import HostileHub, hub, isolate_hub_client, write_tiny_model  # noqa: F401  (hub is a fixture)

ROOT = Path(__file__).resolve().parents[2]

NEEDED = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "model.safetensors.index.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
}


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_model(tmp_path / "tiny")


def _blob(snapshot, name):
    return (snapshot / name).read_bytes()


# ---- parsing and selection ------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("meta-llama/Llama-2-7b-hf", HubId("meta-llama/Llama-2-7b-hf", "main")),
    ("Qwen/Qwen1.5-MoE-A2.7B", HubId("Qwen/Qwen1.5-MoE-A2.7B", "main")),
    ("selfrag/selfrag_llama2_7b@refs/pr/7", HubId("selfrag/selfrag_llama2_7b", "refs/pr/7")),
    ("a/b@" + "0" * 40, HubId("a/b", "0" * 40)),
    ("a/b@v1.0", HubId("a/b", "v1.0")),
])
def test_parse_hub_id_accepts(spec, expected):
    assert parse_hub_id(spec) == expected


@pytest.mark.parametrize("spec", [
    "gpt2", "a/b/c", "./a/b", "/abs/path", "a--b/c", "a/b..c", "-a/b", "a/b-", "a/b@", "a/b@../../x", "a/b@x//y",
    "a/b@x/", "a b/c", "a/b@rev with space", "",
])
def test_parse_hub_id_rejects(spec):
    assert parse_hub_id(spec) is None


def test_select_files_keeps_only_what_awm_reads():
    files = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "qwen.tiktoken", "vocab.json",
             "merges.txt", "README.md", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
             "pytorch_model.bin", "consolidated.00.pth", "original/tokenizer.model", "sub/config.json", "model.gguf"]
    small, weights = select_files("o/n", files)
    assert weights == "model.safetensors.index.json"
    assert small == ["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "vocab.json",
                     "merges.txt", "qwen.tiktoken"]
    assert select_files("o/n", ["config.json", "model.safetensors", "pytorch_model.bin"]) == (["config.json"], "model.safetensors")


@pytest.mark.parametrize("files, message", [
    (["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"], "only pickle weights"),
    (["params.json", "consolidated.00.pth", "tokenizer.model"], "Meta-format"),
    (["config.json", "original/consolidated.00.pth", "pytorch_model.bin"], "Meta-format"),
    (["adapter_config.json", "adapter_model.safetensors"], "adapter"),
    (["config.json", "model.gguf"], "no model.safetensors"),
])
def test_select_files_explains_missing_safetensors(files, message):
    with pytest.raises(CheckpointError, match=message) as info:
        select_files("o/n", files)
    assert "\n" not in str(info.value)


def test_pickle_message_points_to_conversion_pull_requests():
    with pytest.raises(CheckpointError, match=r"o/n@refs/pr/N.*convert"):
        select_files("o/n", ["config.json", "pytorch_model.bin"])


def test_hub_cache_dir_follows_environment(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"
    assert hub_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


# ---- local folders ----------------------------------------------------------------------------
def test_local_folder_is_returned_resolved_without_network(hub, tiny, monkeypatch):
    monkeypatch.chdir(tiny.parent)
    assert resolve_model("tiny") == tiny.resolve()
    assert resolve_model(tiny) == tiny.resolve()
    assert hub.log == []


def test_local_folder_shadows_a_hub_id(hub, tmp_path, monkeypatch):
    folder = write_tiny_model(tmp_path / "org" / "tiny", decoys=False)
    hub.add_folder("org/tiny", folder)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/tiny") == folder.resolve()
    assert hub.log == []


@pytest.mark.parametrize("spec, message", [
    ("no/such/folder", "no such folder, and not a hub id"),
    ("/definitely/not/here", "no such folder"),
])
def test_neither_folder_nor_hub_id(hub, spec, message):
    with pytest.raises(CheckpointError, match=message):
        resolve_model(spec)
    assert hub.log == []


def test_a_file_is_not_a_model_folder(hub, tiny):
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model(tiny / "config.json")


# ---- downloads ------------------------------------------------------------------------------
def test_downloads_exactly_the_needed_files(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    snapshot = resolve_model("org/tiny")
    assert {p.name for p in snapshot.iterdir()} == NEEDED
    for name in NEEDED:
        assert _blob(snapshot, name) == (tiny / name).read_bytes(), name
    assert hub.requested_files() == NEEDED  # decoys were never asked for, not even with HEAD
    assert all(r.path.startswith("/blobs/") for r in hub.requests("cdn"))
    # the snapshot lives in the standard cache layout under HF_HOME
    assert snapshot.parent.parent.name == "models--org--tiny"
    assert snapshot.is_relative_to(hub_cache_dir())
    assert (snapshot.parent.parent / "refs" / "main").read_text() == hub.repos["org/tiny"].commit


def test_downloaded_folder_opens_as_a_checkpoint(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    ckpt = Checkpoint(resolve_model("org/tiny"))
    original = Checkpoint(tiny)
    assert set(ckpt.tensors) == set(original.tensors)
    for name in original.tensors:
        np.testing.assert_array_equal(ckpt.read(name), original.read(name))


def test_second_resolve_makes_no_request(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    first = resolve_model("org/tiny")
    before = len(hub.log)
    assert resolve_model("org/tiny") == first
    assert resolve_model("org/tiny", download=False) == first
    assert cached_snapshot("org/tiny") == first
    assert len(hub.log) == before


def test_single_file_checkpoint(hub, tmp_path):
    folder = write_tiny_model(tmp_path / "single", shard_bytes=None, decoys=False)
    hub.add_folder("org/single", folder)
    snapshot = resolve_model("org/single")
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert "model.safetensors.index.json" not in {p.name for p in snapshot.iterdir()}


def test_revision_tag_and_commit_are_pinned(hub, tiny):
    repo = hub.add_folder("org/tiny", tiny, refs=("main", "v1"))
    by_tag = resolve_model("org/tiny@v1")
    assert by_tag.name == repo.commit
    assert (by_tag.parent.parent / "refs" / "v1").read_text() == repo.commit
    before = len(hub.log)
    assert resolve_model(f"org/tiny@{repo.commit}") == by_tag
    assert resolve_model("org/tiny@v1") == by_tag
    assert len(hub.log) == before


def test_pull_request_revision(hub, tiny):
    repo = hub.add_folder("org/tiny", tiny, refs=("main", "refs/pr/7"))
    snapshot = resolve_model("org/tiny@refs/pr/7")
    assert snapshot.name == repo.commit
    assert (snapshot.parent.parent / "refs" / "refs" / "pr" / "7").read_text() == repo.commit


def test_cache_dir_argument_and_environment(hub, tiny, tmp_path, monkeypatch):
    hub.add_folder("org/tiny", tiny)
    explicit = resolve_model("org/tiny", cache_dir=tmp_path / "explicit")
    assert explicit.is_relative_to(tmp_path / "explicit")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "from_env"))
    assert resolve_model("org/tiny").is_relative_to(tmp_path / "from_env")


# ---- resuming ---------------------------------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """huggingface_hub writes the body in DOWNLOAD_CHUNK_SIZE (10 MB) pieces, so bytes received
    within an unfinished piece are lost; the tiny shards need a smaller piece to keep any."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)


def test_dropped_connection_is_resumed_with_a_range_request(hub, tiny, small_chunks):
    hub.add_folder("org/tiny", tiny)
    shard = "model-00001-of-00003.safetensors"
    hub.interrupt(shard, after_bytes=20_000)
    snapshot = resolve_model("org/tiny")
    assert _blob(snapshot, shard) == (tiny / shard).read_bytes()
    gets = [r for r in hub.requests("cdn", "GET") if r.path == "/blobs/" + hashlib.sha256((tiny / shard).read_bytes()).hexdigest()]
    assert len(gets) == 2 and gets[0].range is None
    start = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 20_000


def test_interrupted_run_resumes_in_the_next_run(hub, tiny, small_chunks, monkeypatch):
    monkeypatch.setenv("AWM_HUB_RETRIES", "0")  # the run gives up on the 503 instead of retrying
    hub.add_folder("org/tiny", tiny)
    shard = "model-00001-of-00003.safetensors"
    data = (tiny / shard).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    hub.interrupt(shard, after_bytes=30_000, then_status=503)  # cut off, then the retry fails too
    with pytest.raises(CheckpointError, match="run again") as info:
        resolve_model("org/tiny")
    assert "\n" not in str(info.value)
    storage = hub_cache_dir() / "models--org--tiny"
    partial = storage / "blobs" / f"{sha}.incomplete"
    kept = partial.stat().st_size
    assert 0 < kept <= 30_000
    assert partial.read_bytes() == data[:kept]
    assert cached_snapshot("org/tiny") is None

    before = len(hub.log)
    snapshot = resolve_model("org/tiny")
    again = [r for r in hub.log[before:] if r.server == "cdn"]
    assert [r.range for r in again if r.path == f"/blobs/{sha}"] == [f"bytes={kept}-"]
    assert _blob(snapshot, shard) == data
    assert not partial.exists()
    # files finished in the first run were not fetched again
    assert not [r for r in hub.log[before:] if r.method == "GET" and r.path.endswith("config.json")]


def test_oversized_partial_file_is_discarded(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    shard = "model-00002-of-00003.safetensors"
    data = (tiny / shard).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    blobs = hub_cache_dir() / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"x" * (len(data) + 10))
    snapshot = resolve_model("org/tiny")
    assert _blob(snapshot, shard) == data
    assert [r.range for r in hub.requests("cdn") if r.path == f"/blobs/{sha}"] == [None]


# ---- errors -----------------------------------------------------------------------------
def test_repository_not_found(hub):
    with pytest.raises(CheckpointError, match="repository not found.*hf auth login") as info:
        resolve_model("org/missing")
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_revision_not_found(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    with pytest.raises(CheckpointError, match="revision 'nope' not found"):
        resolve_model("org/tiny@nope")


def test_gated_repository_needs_a_token_kept_from_the_cdn(hub, tiny, monkeypatch):
    hub.add_folder("org/gated", tiny, gated=True)
    with pytest.raises(CheckpointError, match="gated repository.*accept its terms.*hf auth login"):
        resolve_model("org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_valid_token")
    snapshot = resolve_model("org/gated")
    assert {p.name for p in snapshot.iterdir()} == NEEDED
    assert all(r.authorization is None for r in hub.requests("cdn"))
    assert any(r.authorization == "Bearer hf_valid_token" for r in hub.requests("hub"))


def test_rejected_token(hub, tiny, monkeypatch):
    hub.add_folder("org/tiny", tiny)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    with pytest.raises(CheckpointError, match="rejected the token"):
        resolve_model("org/tiny")


def test_pickle_only_repository_fetches_nothing(hub, tmp_path):
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle" * 100)
    hub.add_folder("org/pickle", folder)
    with pytest.raises(CheckpointError, match="only pickle weights"):
        resolve_model("org/pickle")
    assert hub.requested_files() == set()


@pytest.mark.parametrize("shard, message", [
    ("../evil.safetensors", "not a plain"),
    ("sub/model.safetensors", "not a plain"),
    ("pytorch_model.bin", "not a plain"),
    ("model-00009-of-00009.safetensors", "does not hold"),
])
def test_index_naming_bad_shards_is_refused(hub, tiny, shard, message):
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.embed_tokens.weight"] = shard
    (tiny / "model.safetensors.index.json").write_text(json.dumps(index))
    (tiny / "sub").mkdir()
    (tiny / "sub" / "model.safetensors").write_bytes(b"nested")
    hub.add_folder("org/tiny", tiny)
    with pytest.raises(CheckpointError, match=message):
        resolve_model("org/tiny")
    assert not {n for n in hub.requested_files() if n.endswith(".safetensors") or n.endswith(".bin")}


def test_unreachable_hub(hub, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(CheckpointError, match="cannot reach the hub.*HF_ENDPOINT.*HF_HUB_OFFLINE"):
        resolve_model("org/tiny")


def test_offline_mode_uses_the_cache_only(hub, tiny, monkeypatch):
    hub.add_folder("org/tiny", tiny)
    hub.add_folder("org/other", tiny)
    cached = resolve_model("org/tiny")
    before = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/tiny") == cached
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        resolve_model("org/other")
    assert len(hub.log) == before


def test_download_false_does_not_fetch(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    with pytest.raises(CheckpointError, match="python -m awm_jax.download org/tiny"):
        resolve_model("org/tiny", download=False)
    assert hub.log == []


def test_incomplete_snapshot_is_completed(hub, tiny):
    hub.add_folder("org/tiny", tiny)
    snapshot = resolve_model("org/tiny")
    (snapshot / "model-00003-of-00003.safetensors").unlink()
    assert cached_snapshot("org/tiny") is None
    before = len(hub.log)
    assert resolve_model("org/tiny") == snapshot
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.log[before:] if r.server == "hub" and r.method == "GET" and "/resolve/" in r.path}
    assert fetched == set()  # the blob was still there: only re-linked, nothing downloaded again
    assert Checkpoint(snapshot).files[-1].name == "model-00003-of-00003.safetensors"


# ---- deadlines: no request may hang ------------------------------------------------------------
FAST_LIMITS = {"AWM_HUB_TIMEOUT": "0.5", "AWM_HUB_DEADLINE": "2", "AWM_HUB_STALL": "1", "AWM_HUB_RETRIES": "1"}


@pytest.fixture
def fast_limits(monkeypatch):
    for name, value in FAST_LIMITS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def hostile(tmp_path, monkeypatch, fast_limits, request):
    """A :class:`HostileHub` of mode ``request.param`` with huggingface_hub pointed at it."""
    from huggingface_hub import close_session

    with HostileHub(request.param) as server:
        blocked = isolate_hub_client(monkeypatch, tmp_path, server.endpoint)
        close_session()
        yield server
        close_session()
    assert not blocked


def _timed_failure(spec: str, match: str) -> float:
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as info:
        resolve_model(spec)
    assert "\n" not in str(info.value) and info.value.exit_code == 3
    return time.perf_counter() - t


@pytest.mark.parametrize("hostile, match, limit_s", [
    ("silent", r"did not answer within 0.5 s \(AWM_HUB_TIMEOUT\)|took longer than the 2 s allowed", 6),
    ("drip", r"took longer than the 2 s allowed", 6),
    ("drip_headers", r"took longer than the 2 s allowed", 6),
    ("html", r"did not answer like a Hugging Face Hub .*captive portal", 2),
    ("html_files", r"did not answer like a Hugging Face Hub \(no hub headers on its files", 2),
], indirect=["hostile"])
def test_a_hostile_endpoint_fails_in_one_line_within_the_deadline(hostile, match, limit_s):
    assert _timed_failure("org/tiny", match) < limit_s
    assert hostile.connections >= 1


@pytest.mark.parametrize("how, match", [
    ("drip", r"stalled: \d+ bytes in the last 1 s, below the AWM_HUB_MIN_RATE"),
    ("silent", r"did not answer within 0.5 s|took longer than|stalled"),
])
def test_a_stalled_weight_transfer_is_aborted_and_resumable(hub, tiny, fast_limits, how, match):
    hub.add_folder("org/tiny", tiny)
    shard = "model-00002-of-00003.safetensors"
    hub.stall(shard, how)
    assert _timed_failure("org/tiny", match) < 15
    sha = hashlib.sha256((tiny / shard).read_bytes()).hexdigest()
    assert not (hub_cache_dir() / "models--org--tiny" / "blobs" / sha).exists()  # never published half-written


def test_a_transient_failure_is_retried_within_the_run(hub, tiny, small_chunks):
    hub.add_folder("org/tiny", tiny)
    shard = "model-00001-of-00003.safetensors"
    hub.interrupt(shard, after_bytes=30_000, then_status=503)  # cut off, then 503 once
    snapshot = resolve_model("org/tiny")
    assert _blob(snapshot, shard) == (tiny / shard).read_bytes()


@pytest.mark.parametrize("endpoint, problem", [
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("ftp://mirror.example", "scheme must be http or https"),
    ("http://:8080", "no host name"),
])
def test_a_malformed_endpoint_is_a_usage_error(hub, monkeypatch, endpoint, problem):
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(UsageError, match=re.escape(problem)) as info:
        resolve_model("org/tiny")
    assert info.value.exit_code == 2
    assert hub.log == []


@pytest.mark.parametrize("name, value", [("AWM_HUB_TIMEOUT", "soon"), ("AWM_HUB_DEADLINE", "-1"),
                                         ("AWM_HUB_MIN_RATE", "inf"), ("AWM_HUB_RETRIES", "1.5")])
def test_malformed_limits_are_usage_errors(hub, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=name):
        resolve_model("org/tiny")


def test_limits_default_to_huggingface_hub_timeout(monkeypatch):
    from huggingface_hub import constants

    for name in FAST_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 17)
    limits = NetworkLimits.from_environment()
    assert limits.timeout_s == 17 and limits.retries == 2 and limits.deadline_s == 300


def test_hostile_endpoint_through_the_command_line(tmp_path):
    """The real CLI in a subprocess: one line, exit 3, no traceback, far under 30 s."""
    with HostileHub("silent") as server:
        env = {**os.environ, **FAST_LIMITS, "HF_ENDPOINT": server.endpoint, "HF_HOME": str(tmp_path / "home"),
               "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE"):
            env.pop(name, None)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "awm_jax", "download", "org/tiny"], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=30, stdin=subprocess.DEVNULL)
    assert time.perf_counter() - t < 30
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("awm_jax: error: org/tiny: the hub at ")
