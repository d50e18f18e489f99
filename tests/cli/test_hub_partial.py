"""Partial hub downloads through the real command lines, against the stand-in hub (tests/hub_server.py):
only the tensors read are fetched, a warm model makes no request, nothing missing is ever read,
and reports say who each model is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from awm_jax.cli.audit import main as audit_main
from awm_jax.cli.compare import main as compare_main
from awm_jax.cli.download import main as download_main
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.io.hub import hub_cache_dir
from awm_jax.io.safetensors import read_header
from awm_jax.io.sparse import SparseFile, ranges_path
from awm_jax.report import CompareResult
from hub_server import hub, write_llama_model  # noqa: F401  (hub is a fixture)

#: Tensors of a Llama layer that no score reads (MLP inputs only with --mlp).
NEVER_READ = ("self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight")
MLP_INPUTS = ("mlp.gate_proj.weight", "mlp.up_proj.weight")


def _model(folder: Path, seed: int) -> Path:
    # shards larger than the first header request, so data ranges are fetched on their own
    return write_llama_model(folder, vocab=512, hidden=128, layers=3, intermediate=256, seed=seed, shard_bytes=300_000)


@pytest.fixture
def repos(hub, tmp_path):
    a = _model(tmp_path / "base", 1)
    b = _model(tmp_path / "other", 2)
    hub.add_folder("org/base", a)
    hub.add_folder("org/other", b, refs=("main", "v1"))
    return hub, a, b


def _partial(repo: str) -> Path:
    storage = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    (folder,) = (storage / "awm_partial").iterdir()
    return folder


def _present(folder: Path) -> dict[str, bool]:
    """Tensor name -> whether all its bytes are in the partial files."""
    out = {}
    for shard in folder.glob("*.safetensors"):
        sparse = SparseFile.load(shard)
        for name, info in read_header(shard).items():
            out[name] = not sparse.missing(info.start, info.start + info.nbytes)
    return out


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _json(capsys, argv, main=compare_main) -> tuple[int, dict | None, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


def test_compare_fetches_only_the_tensors_read_and_scores_as_the_local_folders(repos, capsys):
    hub, a, b = repos
    code, partial, _ = _json(capsys, ["org/base", "org/other@v1", "--json", "-", "--no-cache"])
    assert code == 0
    present = _present(_partial("org/base"))
    for name, have in present.items():
        if name.endswith(NEVER_READ + MLP_INPUTS) or name == "lm_head.weight":
            assert not have, name
        if "embed_tokens" in name or name.endswith(("q_proj.weight", "k_proj.weight", "input_layernorm.weight")):
            assert have, name
    assert hub.cdn_bytes < 0.6 * (_weights_bytes(a) + _weights_bytes(b))
    # every range asked for was a Range request (the whole-file path was not used)
    assert all(r.range for r in hub.requests("cdn", "GET"))
    code, local, _ = _json(capsys, [str(a), str(b), "--json", "-", "--no-cache"])
    for key in ("wq", "wk", "mean", "verdict", "p_value", "per_layer_wq", "per_layer_wk"):
        assert partial[key] == local[key], key


def test_a_fingerprinted_hub_model_makes_no_request(repos, capsys):
    hub, _, _ = repos
    assert compare_main(["org/base", "org/other", "--quiet"]) == 0
    before = len(hub.log)
    assert compare_main(["org/base", "org/other", "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert len(hub.log) == before  # not even a HEAD: the partial snapshot keeps the embedding and Q/K


def test_mlp_later_fetches_only_the_mlp_inputs(repos, capsys):
    hub, _, _ = repos
    assert compare_main(["org/base", "org/other", "--quiet"]) == 0
    records = {p: SparseFile.load(p) for p in _partial("org/base").glob("*.safetensors")}
    before = len(hub.log)
    assert compare_main(["org/base", "org/other", "--quiet", "--mlp"]) == 0
    new = [r for r in hub.log[before:] if r.server == "cdn" and r.method == "GET"]
    assert new
    # no byte already present is asked for again
    for shard, old in records.items():
        blob = next(b for b in hub._blobs if hub._blobs[b][0] == shard.name)
        for r in new:
            if r.path.endswith(blob):
                start, end = map(int, r.range.removeprefix("bytes=").split("-"))
                assert old.missing(start, end + 1) == [(start, end + 1)]
    present = _present(_partial("org/base"))
    assert all(have for name, have in present.items() if name.endswith(MLP_INPUTS))
    assert not any(have for name, have in present.items() if name.endswith(NEVER_READ))


def test_a_missing_tensor_is_refused_never_read_as_zeros(repos, capsys, monkeypatch):
    assert compare_main(["org/base", "org/other", "--quiet"]) == 0
    capsys.readouterr()
    ckpt = Checkpoint(_partial("org/base"))
    with pytest.raises(Exception, match="was not fetched"):
        ckpt.read("model.layers.0.mlp.up_proj.weight")
    with pytest.raises(Exception, match="was not fetched"):
        ckpt.map("lm_head.weight")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert compare_main(["org/base", "org/other", "--quiet", "--mlp"]) == 3
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE" in err and "awm_jax: error:" in err


def test_damaged_partial_files_are_refused(repos, capsys):
    assert compare_main(["org/base", "org/other", "--quiet", "--no-cache"]) == 0
    capsys.readouterr()
    folder = _partial("org/base")
    ckpt = Checkpoint(folder)
    info = ckpt.info("model.layers.1.self_attn.q_proj.weight")
    with open(info.file, "r+b") as f:  # one byte of a fetched range changed on disk
        f.seek(info.start + 5)
        byte = f.read(1)
        f.seek(info.start + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert compare_main(["org/base", "org/other", "--quiet", "--no-cache"]) == 3
    _, err = capsys.readouterr()
    assert "checksum mismatch" in err and err.count("\n") == 1
    ranges_path(info.file).unlink()  # a shard of a partial folder without its record is never trusted
    assert compare_main([str(folder), "org/other", "--quiet", "--no-cache"]) == 3
    _, err = capsys.readouterr()
    assert "without its range record" in err
    assert compare_main(["org/base", "org/other", "--quiet", "--no-cache"]) == 0  # the hub id fetches it anew
    assert SparseFile.load(info.file) is not None


def test_an_interrupted_fetch_keeps_its_ranges_and_resumes(repos, capsys, monkeypatch):
    import hashlib

    hub, a, _ = repos
    monkeypatch.setenv("AWM_HUB_RETRIES", "0")
    first = sorted(p.name for p in a.glob("*.safetensors"))[0]
    hub.interrupt(first, after_bytes=1000, then_status=503, from_byte=1)  # a data range, not the header
    assert compare_main(["org/base", "org/other", "--quiet"]) == 3  # the range request broke off, no retry left
    _, err = capsys.readouterr()
    assert "run the same command again to resume" in err and err.count("\n") == 1
    shards = sorted(_partial("org/base").glob("*.safetensors"))
    kept = sum(SparseFile.load(p).present_bytes() for p in shards)
    headers = sum(SparseFile.load(p).ranges[0].end for p in shards)
    before = len(hub.log)
    monkeypatch.setenv("AWM_HUB_RETRIES", "2")
    assert compare_main(["org/base", "org/other", "--quiet"]) == 0
    base_blobs = {hashlib.sha256(p.read_bytes()).hexdigest() for p in a.glob("*.safetensors")}
    asked = 0
    ranges = {(r.path, r.range) for r in hub.log[before:]  # the range answered 503 once is asked again
              if r.server == "cdn" and r.method == "GET" and r.path.split("/")[-1] in base_blobs}
    for _, rng in ranges:
        start, end = map(int, rng.removeprefix("bytes=").split("-"))
        asked += end + 1 - start
    after = sum(SparseFile.load(p).present_bytes() for p in shards)
    assert kept > headers  # ranges fetched before the failure were kept
    assert asked == after - kept  # and only the rest was asked for


def test_download_full_after_partial_fetches_only_what_is_missing(repos, capsys):
    hub, a, _ = repos
    assert download_main(["org/base"]) == 0
    out, _ = capsys.readouterr()
    assert "partial" in out
    present = sum(SparseFile.load(p).present_bytes() for p in _partial("org/base").glob("*.safetensors"))
    sent = hub.cdn_bytes
    assert download_main(["org/base", "--download", "full"]) == 0
    capsys.readouterr()
    assert hub.cdn_bytes - sent <= _weights_bytes(a) - present + 1000  # the holes only (plus headers of requests)
    snapshot = hub_cache_dir() / "models--org--base" / "snapshots" / hub.repos["org/base"].commit
    for shard in a.glob("*.safetensors"):
        assert (snapshot / shard.name).read_bytes() == shard.read_bytes()  # checked against the SHA-256 too
    before = len(hub.log)
    assert compare_main(["org/base", str(a), "--quiet", "--no-cache"]) == 0
    assert len(hub.log) == before


def test_download_partial_then_compare_makes_no_request(repos, capsys):
    hub, _, _ = repos
    assert download_main(["org/base", "org/other@v1"]) == 0
    assert download_main(["org/base", "org/other@v1"]) == 0
    out, _ = capsys.readouterr()
    assert out.count(": cached") == 2
    before = len(hub.log)
    assert compare_main(["org/base", "org/other@v1", "--quiet"]) == 0
    assert len(hub.log) == before


def test_reports_say_who_each_model_is(repos, capsys, tmp_path):
    hub, a, b = repos
    code, d, _ = _json(capsys, ["org/base", "org/other@v1", "--json", "-"])
    o = d["model_b"]["origin"]
    assert (o["kind"], o["repo_id"], o["revision"], o["commit"], o["download"]) == (
        "hub", "org/other", "v1", hub.repos["org/other"].commit, "partial")
    etags = {f["name"]: f["etag"] for f in o["files"]}
    import hashlib

    for shard in b.glob("*.safetensors"):
        assert etags[shard.name] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= set(etags)
    assert all(etags.values())
    r = CompareResult.from_dict(d)
    assert json.loads(r.to_json()) == d  # the record round-trips
    assert compare_main(["org/base", "org/other@v1"]) == 0
    out, _ = capsys.readouterr()
    assert "org/other@v1 (commit " in out and "partial download" in out
    code, d, _ = _json(capsys, [str(a), "org/other@v1", "--json", "-", "--download", "full"])
    o = d["model_a"]["origin"]
    assert (o["kind"], o["path"], o["repo_id"]) == ("folder", str(a.resolve()), "")
    sizes = {f["name"]: f["size"] for f in o["files"]}
    assert sizes["config.json"] == (a / "config.json").stat().st_size
    assert all(sizes[p.name] == p.stat().st_size for p in a.glob("*.safetensors"))
    assert d["model_b"]["origin"]["download"] == "full" and d["model_b"]["origin"]["revision"] == "v1"


def test_audit_names_hub_models_by_repo_id(repos, capsys, tmp_path):
    _, a, _ = repos
    out = tmp_path / "out"
    assert audit_main(["org/base", "org/other@v1", str(a), "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "audit.json").read_text())
    assert result["rows"] == ["org/base", "org/other@v1", "base"]
    assert [m["origin"]["kind"] for m in result["models"]] == ["hub", "hub", "folder"]
    assert audit_main(["org/base", str(a), "--against", "org/other@v1", "--out", str(tmp_path / "n"), "--quiet"]) == 0
    result = json.loads((tmp_path / "n" / "audit.json").read_text())
    assert (result["rows"], result["columns"]) == (["org/base", "base"], ["org/other@v1"])


def test_help_names_hub_ids(capsys):
    for main in (compare_main, audit_main):
        with pytest.raises(SystemExit):
            main(["--help"])
        out, _ = capsys.readouterr()
        text = " ".join(out.split())
        assert "owner/name or owner/name@revision" in text and "--download {partial,full}" in text



@pytest.mark.parametrize("how, match", [
    ("drip", r"stalled: \d+ bytes in the last 1 s|took longer than"),
    ("silent", r"did not answer within 0.5 s|took longer than|stalled"),
])
def test_a_stalled_range_request_fails_in_one_line_within_the_deadline(repos, capsys, monkeypatch, how, match):
    import re
    import time

    hub, a, _ = repos
    for name, value in {"AWM_HUB_TIMEOUT": "0.5", "AWM_HUB_STALL": "1", "AWM_HUB_DEADLINE": "5",
                        "AWM_HUB_RETRIES": "0", "AWM_HUB_MIN_RATE": "20000"}.items():
        monkeypatch.setenv(name, value)
    hub.stall(sorted(p.name for p in a.glob("*.safetensors"))[0], how)
    t = time.monotonic()
    assert compare_main(["org/base", "org/other", "--quiet"]) == 3
    assert time.monotonic() - t < 20
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and re.search(match, err), err


def test_a_single_file_repository_is_fetched_partially(hub, tmp_path, capsys):
    a = write_llama_model(tmp_path / "one", vocab=512, hidden=128, layers=2, intermediate=256, seed=3, shard_bytes=None)
    hub.add_folder("org/one", a)
    code, d, _ = _json(capsys, ["org/one", str(a), "--json", "-", "--no-cache"])
    assert code == 0 and d["mean"] == pytest.approx(1.0, abs=1e-6)
    assert hub.cdn_bytes < 0.6 * _weights_bytes(a)
    assert not _present(_partial("org/one"))["lm_head.weight"]


def test_a_server_error_on_a_range_is_one_line(repos, capsys, monkeypatch):
    hub, a, _ = repos
    monkeypatch.setenv("AWM_HUB_RETRIES", "0")
    hub.interrupt(sorted(p.name for p in a.glob("*.safetensors"))[0], 0, then_status=503, from_byte=1)
    assert compare_main(["org/base", "org/other", "--quiet"]) == 3  # a broken answer
    assert compare_main(["org/base", "org/other", "--quiet"]) == 3  # then a 503
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "503" in lines[1] and "Traceback" not in err
    assert compare_main(["org/base", "org/other", "--quiet"]) == 0


def test_an_adapter_over_a_hub_base_fetches_the_base_partially(repos, capsys, tmp_path):
    import importlib.util

    hub, a, _ = repos
    spec = importlib.util.spec_from_file_location("adapters_test", Path(__file__).parents[1] / "io" / "test_adapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_adapter(a, tmp_path / "adapter", base_name="org/base")
    code, over_hub, _ = _json(capsys, [str(tmp_path / "adapter"), "org/other", "--json", "-", "--no-cache"])
    assert code == 0
    present = _present(_partial("org/base"))
    assert present["model.embed_tokens.weight"] and not present["lm_head.weight"]
    code, over_local, _ = _json(capsys, [str(tmp_path / "adapter"), "org/other", "--json", "-", "--no-cache",
                                         "--adapter-base", str(a)])
    assert (over_hub["wq"], over_hub["wk"]) == (over_local["wq"], over_local["wk"])
