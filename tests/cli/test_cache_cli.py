"""``python -m awm_jax cache list|size|prune`` and the cache's size cap, through the real command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from awm_jax.cli.compare import main as compare_main
from awm_jax.fingerprint.cache import CACHE_FORMAT
from conftest import random_model, save_llama

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cache_cli(*args, env=None):
    """Runs ``python -m awm_jax cache ARGS`` (no JAX: fast)."""
    return subprocess.run([sys.executable, "-m", "awm_jax", "cache", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=60)


def listing(cache: Path) -> dict:
    out = cache_cli("list", "--cache-dir", cache, "--json", "-")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(5)
    out = {}
    for name in ("a", "b", "c"):
        emb, qs, ks = random_model(rng)
        out[name] = save_llama(tmp_path / name, emb, qs, ks)
    return out


def fingerprint(capsys, cache: Path, *folders: Path) -> None:
    """Fingerprints models into ``cache`` through the compare command line."""
    for a, b in zip(folders[::2], folders[1::2]):
        assert compare_main([str(a), str(b), "--cache-dir", str(cache), "--quiet"]) == 0
    capsys.readouterr()


def folders(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "fingerprints").iterdir() if not p.name.startswith(".tmp"))


def age(folder: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(folder, (t, t))


def test_list_and_size_show_every_entry(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["a"], models["b"])
    d = listing(cache)
    assert d["root"] == str(cache) and len(d["entries"]) == 2
    by_source = {e["source"]: e for e in d["entries"]}
    assert set(by_source) == {str(models["a"].resolve()), str(models["b"].resolve())}
    for e in d["entries"]:
        folder = cache / "fingerprints" / e["key"]
        assert e["state"] == "ok" and e["kind"] == "qk" and e["norm_gains"] == "fold" and e["layout"] == "llama"
        assert (e["num_layers"], e["hidden_size"]) == (3, 64) and e["index_files"] == 1
        assert e["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        assert e["bytes"] < 2 * 3 * 64 * 64 * 4  # the Grams are stored once (upper triangles)
    index = sum(p.stat().st_size for p in (cache / "index").iterdir())
    assert d["total_bytes"] == sum(e["bytes"] for e in d["entries"]) + index
    text = cache_cli("list", "--cache-dir", cache)
    assert text.returncode == 0 and str(models["a"].resolve()) in text.stdout
    assert d["entries"][0]["key"][:16] in text.stdout and "2 fingerprint(s)" in text.stdout
    size = cache_cli("size", "--json", "-", env={"AWM_JAX_CACHE": str(cache), "AWM_JAX_CACHE_MAX_GB": "2.5"})
    s = json.loads(size.stdout)
    assert s["total_bytes"] == d["total_bytes"] and s["entries"] == 2 and s["cap_bytes"] == 2_500_000_000
    assert cache_cli("--version").stdout.startswith("awm_jax ")
    empty = cache_cli("size", "--cache-dir", tmp_path / "nothing")
    assert empty.returncode == 0 and "0 B in 0 fingerprint(s)" in empty.stdout


def test_a_lookup_records_the_last_use(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["a"], models["b"])
    for folder in folders(cache):
        age(folder, 86400)
    old = {e["key"]: e["last_use"] for e in listing(cache)["entries"]}
    assert compare_main([str(models["a"]), str(models["b"]), "--cache-dir", str(cache), "--json", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().err == ""
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["model_a"]["fingerprint_cached"] and r["model_b"]["fingerprint_cached"]
    new = {e["key"]: e["last_use"] for e in listing(cache)["entries"]}
    assert all(new[k] > old[k] for k in old)


def test_prune_evicts_least_recently_used_first(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["a"], models["b"], models["c"], models["a"])
    entries = {e["source"]: e for e in listing(cache)["entries"]}
    for hours, name in ((3, "c"), (2, "a"), (1, "b")):
        age(cache / "fingerprints" / entries[str(models[name].resolve())]["key"], hours * 3600)
    keep = entries[str(models["b"].resolve())]["bytes"] + entries[str(models["a"].resolve())]["bytes"] + 4096
    dry = cache_cli("prune", "--cache-dir", cache, "--max-gb", keep / 1e9, "--dry-run", "--json", "-")
    assert json.loads(dry.stdout)["evicted"] == [entries[str(models["c"].resolve())]["key"]]
    assert len(folders(cache)) == 3
    out = cache_cli("prune", "--cache-dir", cache, "--max-gb", keep / 1e9)
    assert out.returncode == 0 and out.stderr == "" and "evicted 1 fingerprint(s)" in out.stdout
    left = listing(cache)
    assert {e["source"] for e in left["entries"]} == {str(models["a"].resolve()), str(models["b"].resolve())}
    assert left["index"] == {"files": 2, "bytes": left["index"]["bytes"], "dangling": 0}
    assert left["total_bytes"] <= keep
    # the evicted model is computed again, without a warning: eviction is not damage
    assert compare_main([str(models["c"]), str(models["a"]), "--cache-dir", str(cache), "--json",
                         str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().err == ""
    r = json.loads((tmp_path / "r.json").read_text())
    assert not r["model_a"]["fingerprint_cached"] and r["model_b"]["fingerprint_cached"]
    out = cache_cli("prune", "--cache-dir", cache, "--max-gb", 0, "--json", "-")
    assert len(json.loads(out.stdout)["evicted"]) == 3 and listing(cache)["total_bytes"] == 0


HOLD = r"""
import sys, time
from awm_jax.fingerprint import FingerprintCache
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import detect
g = FingerprintCache(sys.argv[2]).lookup(detect(Checkpoint(sys.argv[1])))
print("held" if g is not None else "miss", flush=True)
sys.stdin.readline()
q, k = g.chunk(0, g.num_layers)
print(float(q.sum()), flush=True)
"""


def test_prune_keeps_entries_in_use(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["a"], models["b"])
    reader = subprocess.Popen([sys.executable, "-c", HOLD, str(models["a"]), str(cache)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert reader.stdout.readline().strip() == "held"
        out = cache_cli("prune", "--cache-dir", cache, "--max-gb", 0, "--json", "-")
        report = json.loads(out.stdout)
        assert len(report["evicted"]) == 1 and len(report["in_use"]) == 1
        assert [e["source"] for e in listing(cache)["entries"]] == [str(models["a"].resolve())]
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert float(reader.stdout.readline())  # the reader still reads its entry
    finally:
        _, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and err == ""
    out = cache_cli("prune", "--cache-dir", cache, "--max-gb", 0, "--json", "-")
    assert len(json.loads(out.stdout)["evicted"]) == 1 and not folders(cache)


def test_prune_never_follows_links_out_of_the_cache(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["a"], models["b"])
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"x" * 1000)
    entry = folders(cache)[0]
    (entry / "link-to-outside").symlink_to(outside)
    (cache / "fingerprints" / ("f" * 64)).symlink_to(outside)
    (cache / "index" / "stray.json").symlink_to(outside / "data.bin")
    out = cache_cli("prune", "--cache-dir", cache, "--max-gb", 0)
    assert out.returncode == 0, out.stderr
    assert (outside / "data.bin").read_bytes() == b"x" * 1000
    assert not entry.exists() and not (cache / "index" / "stray.json").is_symlink()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "fingerprints").symlink_to(outside)
    out = cache_cli("prune", "--cache-dir", linked, "--max-gb", 0)
    assert out.returncode == 7 and out.stderr.count("\n") == 1 and "is a link" in out.stderr
    assert (outside / "data.bin").exists()


def test_prune_removes_what_no_run_can_use(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["a"], models["b"])
    fp = cache / "fingerprints"
    stale = folders(cache)[0]
    meta = json.loads((stale / "meta.json").read_text())
    meta["format"] = CACHE_FORMAT - 1
    (stale / "meta.json").write_text(json.dumps(meta))
    leftover, fresh = fp / ".tmp-killed", fp / ".tmp-writing"
    for folder in (leftover, fresh):
        folder.mkdir()
        (folder / "gram_q.f32").write_bytes(b"\0" * 100)
    age(leftover / "gram_q.f32", 7200)
    age(leftover, 7200)
    (cache / "index" / "old.json").write_text(json.dumps({"format": CACHE_FORMAT - 1, "content_key": "0" * 64}))
    d = listing(cache)
    assert sorted(e["state"] for e in d["entries"]) == ["ok", "stale"]
    assert [t["name"] for t in d["temporary"]] == [".tmp-killed", ".tmp-writing"]
    out = cache_cli("prune", "--cache-dir", cache, "--json", "-")
    report = json.loads(out.stdout)
    assert report["evicted"] == [stale.name] and report["removed_temporary"] == [".tmp-killed"]
    assert report["removed_index"] == 2  # the old-format one and the stale entry's
    assert fresh.exists() and not leftover.exists() and len(folders(cache)) == 1


def test_cache_max_gb_evicts_after_publishing(tmp_path, models, capsys):
    cache = tmp_path / "cache"
    fingerprint(capsys, cache, models["c"], models["b"])
    entries = {e["source"]: e for e in listing(cache)["entries"]}
    age(cache / "fingerprints" / entries[str(models["c"].resolve())]["key"], 3600)
    one = entries[str(models["b"].resolve())]["bytes"]
    cap_gb = (2 * one + 4096) / 1e9
    proc = subprocess.run([sys.executable, "-m", "awm_jax", "compare", models["a"], models["b"], "--cache-dir", cache,
                           "--cache-max-gb", repr(cap_gb), "--quiet"], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert {e["source"] for e in listing(cache)["entries"]} == {str(models["a"].resolve()), str(models["b"].resolve())}
    # a cap smaller than the entries in use: kept while in use, evicted when the command ends
    proc = subprocess.run([sys.executable, "-m", "awm_jax", "compare", models["c"], models["b"], "--cache-dir", cache,
                           "--quiet"], capture_output=True, text=True, env={**ENV, "AWM_JAX_CACHE_MAX_GB": "0"},
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert listing(cache)["total_bytes"] == 0


def test_audit_cache_max_gb(tmp_path, models):
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "awm_jax", "audit", models["a"], models["b"], models["c"], "--out",
                           tmp_path / "out", "--cache-dir", cache, "--cache-max-gb", "0", "--quiet",
                           "--family-threshold", "0.5"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "out" / "audit.json").is_file() and listing(cache)["total_bytes"] == 0


@pytest.mark.parametrize("args, env, text", [
    (["prune", "--max-gb", "-1"], {}, "--max-gb must be"),
    (["prune", "--max-gb", "nan"], {}, "--max-gb must be"),
    (["size"], {"AWM_JAX_CACHE_MAX_GB": "lots"}, "AWM_JAX_CACHE_MAX_GB='lots' is not a size"),
    ([], {}, "the following arguments are required"),
    (["list", "--json", "nodir/x.json"], {}, "--json nodir/x.json"),
])
def test_usage_errors_are_one_line(tmp_path, args, env, text):
    out = subprocess.run([sys.executable, "-m", "awm_jax", "cache", *args], capture_output=True, text=True,
                         env={**ENV, "AWM_JAX_CACHE": str(tmp_path / "c"), **env}, cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_compare_rejects_a_negative_cap(tmp_path, models, capsys):
    assert compare_main([str(models["a"]), str(models["b"]), "--cache-max-gb", "-2"]) == 2
    assert "--cache-max-gb must be" in capsys.readouterr().err
