"""Faults: a process killed at any point of a cache write, and a full disk.

A killed fingerprint computation must leave a cache in which every entry is either absent or
complete, and a rerun must give bit-identical Grams and scores. A full disk during a cache
write must be one ``CacheError`` line, leave the cache valid and leave no temporary files.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_model, save_llama

import awm_jax.fingerprint as fp
import awm_jax.fingerprint.grams as fp_grams
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.compare import main
from awm_jax.errors import CacheError
from awm_jax.layouts import detect
from awm_jax.engine import compare

ROOT = Path(__file__).resolve().parents[2]

#: The child computes model A's fingerprint into the cache and kills itself with SIGKILL at
#: the named point (a hook on the function the cache write goes through at that moment).
CHILD = r"""
import os, signal, sys
from pathlib import Path
import awm_jax.fingerprint as fp
import awm_jax.fingerprint.grams as fp_grams
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import detect

point, model, cache = sys.argv[1:4]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def on_call(owner, name, number, before=True):
    real = getattr(owner, name)
    calls = [0]
    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] == number and before:
            die()
        out = real(*args, **kwargs)
        if calls[0] == number:
            die()
        return out
    setattr(owner, name, hooked)

if point == "computing_second_chunk":      # one layer per chunk: chunk 0 written, chunk 1 computing
    fp_grams.CHUNK_BYTES = 1
    on_call(fp_grams, "_grams", 3)
elif point == "before_publish":            # Gram files complete in the temporary folder
    on_call(fp.FingerprintCache, "publish", 1)
elif point == "writing_meta":              # half of meta.json written
    real_write = Path.write_text
    def half(self, text, *args, **kwargs):
        if self.name == "meta.json":
            real_write(self, text[: len(text) // 2])
            die()
        return real_write(self, text, *args, **kwargs)
    Path.write_text = half
elif point == "before_folder_rename":      # os.replace(temporary folder -> content key)
    on_call(os, "replace", 1)
elif point == "before_index_rename":       # index written to its temporary name, not yet renamed
    on_call(os, "replace", 2)
elif point == "after_index_rename":        # everything published, process dies before returning
    on_call(os, "replace", 2, before=False)
else:
    raise SystemExit(f"unknown point {point}")
fp.model_grams(detect(Checkpoint(model)), fp.FingerprintCache(cache))
print("finished without being killed")
"""

KILL_POINTS = ["computing_second_chunk", "before_publish", "writing_meta", "before_folder_rename",
               "before_index_rename", "after_index_rename"]

def scores(result) -> dict:
    """Every field of a result but wall times, versions and whether the cache was hit."""
    d = result.to_dict()
    for model in ("model_a", "model_b"):
        d[model].pop("fingerprint_cached")
    return {k: v for k, v in d.items() if k not in ("timings", "environment")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(7)
    emb, qs, ks = random_model(rng, vocab=96, hidden=32, layers=3, q_dim=32, k_dim=16)
    root = tmp_path_factory.mktemp("fault-models")
    a = save_llama(root / "a", emb, qs, ks)
    b = save_llama(root / "b", emb, [q + 0.05 * rng.standard_normal(q.shape).astype(np.float32) for q in qs], ks)
    reference = model_grams_uncached(a)
    baseline = scores(compare(a, b, cache=False, device="cpu"))
    return a, b, reference, baseline


def model_grams_uncached(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    g = fp.model_grams(detect(Checkpoint(folder)), None)
    return g.chunk(0, g.num_layers)


def grams_of(g: fp.GramSet) -> tuple[np.ndarray, np.ndarray]:
    return g.chunk(0, g.num_layers)


def temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.startswith(".tmp")] if cache.exists() else []


def assert_absent_or_complete(folder: Path, cache: Path, reference) -> bool:
    """The cache entry of ``folder`` is missing or holds exactly the reference Grams."""
    hit = fp.FingerprintCache(cache).lookup(detect(Checkpoint(folder)))
    if hit is None:
        return False
    q, k = grams_of(hit)
    np.testing.assert_array_equal(q, reference[0])
    np.testing.assert_array_equal(k, reference[1])
    return True


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_cache_write_leaves_a_valid_cache_and_rerun_is_identical(models, tmp_path, point):
    a, b, reference, baseline = models
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, point, str(a), str(cache)], capture_output=True, text=True, check=False,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    complete = assert_absent_or_complete(a, cache, reference)
    assert complete == (point == "after_index_rename")
    # Rerun on the same cache: the Grams and every score are bit-identical to an uncached run.
    q, k = grams_of(fp.model_grams(detect(Checkpoint(a)), fp.FingerprintCache(cache)))
    np.testing.assert_array_equal(q, reference[0])
    np.testing.assert_array_equal(k, reference[1])
    assert assert_absent_or_complete(a, cache, reference)
    assert scores(compare(a, b, cache=True, cache_dir=cache, device="cpu")) == baseline
    assert scores(compare(a, b, cache=True, cache_dir=cache, device="cpu")) == baseline  # warm


class _FullDiskFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fail_gram_files(monkeypatch):
    monkeypatch.setattr(fp_grams, "open", lambda path, mode="r", *a, **k: _FullDiskFile(open(path, mode, *a, **k)),
                        raising=False)


def _fail_meta(monkeypatch):
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name == "meta.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _fail_index(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDiskFile(real(fd, *a, **k)))


@pytest.mark.parametrize("inject", [_fail_gram_files, _fail_meta, _fail_index], ids=["grams", "meta", "index"])
def test_full_disk_is_a_cache_error_and_the_cache_stays_valid(models, tmp_path, monkeypatch, inject):
    a, _, reference, _ = models
    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        inject(patch)
        with pytest.raises(CacheError, match="No space left on device") as e:
            fp.model_grams(detect(Checkpoint(a)), fp.FingerprintCache(cache))
    assert "\n" not in str(e.value) and "free disk space" in str(e.value)
    assert temporaries(cache) == []
    assert not assert_absent_or_complete(a, cache, reference)
    q, k = grams_of(fp.model_grams(detect(Checkpoint(a)), fp.FingerprintCache(cache)))  # disk freed: retry works
    np.testing.assert_array_equal(q, reference[0])
    np.testing.assert_array_equal(k, reference[1])
    assert assert_absent_or_complete(a, cache, reference)


def test_full_disk_through_the_cli(models, tmp_path, monkeypatch, capsys):
    a, b, _, _ = models
    _fail_gram_files(monkeypatch)
    assert main([str(a), str(b), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == CacheError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("awm_jax: error: ") and "No space left on device" in err
    assert temporaries(tmp_path / "cache") == []


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 KiB tmpfs (root only); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_full_filesystem(small_filesystem, tmp_path):
    rng = np.random.default_rng(3)
    emb, qs, ks = random_model(rng, vocab=64, hidden=128, layers=4, q_dim=128, k_dim=64)  # 512 KiB of Grams
    big = save_llama(tmp_path / "big", emb, qs, ks)
    cache = small_filesystem / "cache"
    with pytest.raises(CacheError, match="No space left on device"):
        fp.model_grams(detect(Checkpoint(big)), fp.FingerprintCache(cache))
    assert temporaries(cache) == []
    assert fp.FingerprintCache(cache).lookup(detect(Checkpoint(big))) is None
