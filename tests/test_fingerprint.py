"""The fingerprint cache: warm runs read no Q/K weights, changes invalidate, writes are atomic."""

import jax
import numpy as np
import pytest

import awm_jax
from awm_jax.errors import CacheError
from awm_jax.fingerprint import FingerprintCache, GramSet, default_cache_dir, model_grams
from awm_jax.layouts import ResolvedLayout, detect
from awm_jax.io.checkpoint import Checkpoint
from conftest import random_model, save_llama


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(0)
    emb, qs, ks = random_model(rng)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    b = save_llama(tmp_path / "b", emb, [q + 0.2 * rng.standard_normal(q.shape).astype(np.float32) for q in qs], ks)
    return a, b


def test_warm_comparison_reads_no_qk_weights(tmp_path, models, monkeypatch):
    a, b = models
    cold = awm_jax.compare(a, b, cache_dir=tmp_path / "c")
    assert not cold.model_a.fingerprint_cached

    def forbidden(self, layer):
        raise AssertionError("Q/K weights read on a warm run")

    monkeypatch.setattr(ResolvedLayout, "read_qk", forbidden)
    monkeypatch.setattr(ResolvedLayout, "resolve", None, raising=False)
    warm = awm_jax.compare(a, b, cache_dir=tmp_path / "c")
    assert warm.model_a.fingerprint_cached and warm.model_b.fingerprint_cached
    assert warm.mean == cold.mean and warm.layers == cold.layers


def test_changed_weights_invalidate_the_entry(tmp_path, models):
    a, b = models
    first = awm_jax.compare(a, b, cache_dir=tmp_path / "c")
    rng = np.random.default_rng(5)
    emb, qs, ks = random_model(rng)
    save_llama(b, emb, qs, ks)  # same folder, new weights
    second = awm_jax.compare(a, b, cache_dir=tmp_path / "c")
    assert not second.model_b.fingerprint_cached
    assert abs(second.mean) < 0.1 < first.mean


def test_cached_grams_equal_computed_grams(tmp_path, models):
    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    assert cached.folder is not None and mem.folder is None
    for g in (cached, FingerprintCache(tmp_path / "c").lookup(r)):
        q1, k1 = g.chunk(1, 3)
        np.testing.assert_array_equal(q1, mem.q[1:3])
        np.testing.assert_array_equal(k1, mem.k[1:3])


def test_padded_maps_whole_spans_and_copies_the_rest(tmp_path, models):
    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    cases = {(1, 2): True, (0, 1, 2): True, (2, 0): False, (1,): False}  # layers -> mapped (no padding, one span)
    for layers, mapped in cases.items():
        size = len(layers) if mapped else len(layers) + 1
        for got, want in zip(cached.padded(list(layers), size), mem.padded(list(layers), size)):
            assert (not got.flags.owndata and not got.flags.writeable) == mapped  # mapped read-only, or a copy
            if mapped:  # on the CPU, JAX takes the mapped pages without a copy
                assert jax.device_put(got, jax.devices("cpu")[0]).unsafe_buffer_pointer() == got.ctypes.data
            np.testing.assert_array_equal(got, want)
            assert got.ctypes.data % 64 == 0


def test_interrupted_write_leaves_no_entry(tmp_path, models, monkeypatch):
    a, _ = models
    r = detect(Checkpoint(a))
    cache = FingerprintCache(tmp_path / "c")
    calls = {"n": 0}
    real = ResolvedLayout.read_qk

    def dies(self, layer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, layer)

    monkeypatch.setattr(ResolvedLayout, "read_qk", dies)
    with pytest.raises(KeyboardInterrupt):
        model_grams(r, cache)
    monkeypatch.setattr(ResolvedLayout, "read_qk", real)
    assert cache.lookup(r) is None
    assert not [p for p in (tmp_path / "c" / "fingerprints").iterdir() if p.name.startswith(".tmp")]
    assert isinstance(model_grams(r, cache), GramSet) and cache.lookup(r) is not None


def test_unwritable_cache_is_a_cache_error(tmp_path, models):
    a, _ = models
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="--no-cache"):
        awm_jax.compare(a, a, cache_dir=blocker / "sub")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWM_JAX_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("AWM_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "awm_jax"
