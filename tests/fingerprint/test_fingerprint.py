"""The fingerprint cache: warm runs read no Q/K weights, changes invalidate, writes are atomic,
and nothing read from the cache is trusted without a check (damaged, swapped, forged or stale
entries are dropped with one warning line and computed again: the scores never change)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import awm_jax
import awm_jax.fingerprint.cache as cache_mod
from awm_jax.cli.compare import main
from awm_jax.errors import CacheError
from awm_jax.fingerprint import FingerprintCache, GramSet, default_cache_dir, model_grams
from awm_jax.fingerprint._checksum import BLOCK_BYTES, BlockDigest, file_digests
from awm_jax.fingerprint.cache import file_key
from awm_jax.layouts import ResolvedLayout, detect
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.numerics.kernels import hsic_parts_layers
from conftest import random_model, save_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts as a new process would: nothing verified or warned about yet."""
    cache_mod._VERIFIED.clear()
    cache_mod._WARNED.clear()
    yield
    cache_mod._VERIFIED.clear()
    cache_mod._WARNED.clear()


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(0)
    emb, qs, ks = random_model(rng)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    b = save_llama(tmp_path / "b", emb, [q + 0.2 * rng.standard_normal(q.shape).astype(np.float32) for q in qs], ks)
    return a, b


def test_warm_comparison_reads_one_layer_of_qk_weights(tmp_path, models, monkeypatch):
    a, b = models
    cold = awm_jax.compare(a, b, cache_dir=tmp_path / "c")
    assert not cold.model_a.fingerprint_cached

    reads = []
    real = ResolvedLayout.read_qk

    def counted(self, layer):
        reads.append((str(self.ckpt.root), layer))
        return real(self, layer)

    monkeypatch.setattr(ResolvedLayout, "read_qk", counted)
    monkeypatch.setattr(ResolvedLayout, "resolve", None, raising=False)
    warm = awm_jax.compare(a, b, cache_dir=tmp_path / "c")
    assert warm.model_a.fingerprint_cached and warm.model_b.fingerprint_cached
    assert warm.mean == cold.mean and warm.layers == cold.layers
    # One layer per model is read, for the check of the cached Grams against the weights.
    assert sorted(root for root, _ in reads) == sorted([str(a), str(b)])


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


def test_stored_parts_are_the_parts_of_the_grams_in_memory(tmp_path, models):
    # Each layer's HSIC parts are stored after the Grams: read back, they are bit for bit what a
    # set in memory computes, in any order and group of layers, and they are the parts of the Gram.
    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    assert mem.folder is None and cached.folder is not None
    for index in (0, 1):
        for layers_ in ([0, 1, 2], [2, 0], [1]):
            got, want = cached.upper_parts(index, layers_), mem.upper_parts(index, layers_)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
        whole = hsic_parts_layers(jnp.asarray(mem.arrays[index]))
        stored = cached.upper_parts(index, [0, 1, 2])
        for field in ("diag", "rows", "total", "self_term", "scale", "unit"):
            want = np.asarray(getattr(whole, field))  # the whole Grams' parts: another summation order
            np.testing.assert_allclose(getattr(stored, field), want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                       err_msg=field)


def test_padded_unpacks_stored_upper_triangles(tmp_path, models):
    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    n, layers = r.hidden_size, r.num_layers
    for name in ("gram_q.f32", "gram_k.f32"):  # half the bytes of the full Grams (plus the diagonal), then the parts
        assert (cached.folder / name).stat().st_size == layers * (n * (n + 1) // 2 + 2 * n + 4) * 4
    stored = np.fromfile(cached.folder / "gram_q.f32", np.float32)[: layers * n * (n + 1) // 2].reshape(layers, -1)
    rows, cols = np.triu_indices(n)
    np.testing.assert_array_equal(stored, mem.q[:, rows, cols])  # row by row, K[i, i:]
    for layers_, size in {(1, 2): 2, (0, 1, 2): 3, (2, 0): 3, (1,): 2}.items():
        for got, want in zip(cached.padded(list(layers_), size), mem.padded(list(layers_), size)):
            assert got.flags.writeable and got.ctypes.data % 64 == 0  # an aligned buffer JAX takes as it is
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got, got.transpose(0, 2, 1))
            assert not got[len(layers_):].any()


def test_upper_form_reads_are_the_upper_triangles_from_disk_and_memory(tmp_path, models):
    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    # evenly spaced runs, single layers, a run of one after a longer one, padding
    for layers_, size in {(0, 2): 2, (2, 1, 0): 3, (0, 1, 2): 4, (1,): 1}.items():
        want = [np.triu(x[list(layers_)]) for x in (mem.q, mem.k)]
        for g in (mem, cached):
            for got, w in zip(g.padded(list(layers_), size, upper=True), want):
                assert got.ctypes.data % 64 == 0
                np.testing.assert_array_equal(got[: len(layers_)], w)
                assert not got[len(layers_):].any()


def test_gather_reads_submatrices(tmp_path, models):
    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    rows = np.random.default_rng(3).permutation(r.hidden_size)[:17]
    for g in (mem, cached):
        for got, full in zip(g.gather(rows), (mem.q, mem.k)):
            assert got.shape == (r.num_layers, 17, 17)
            np.testing.assert_array_equal(got, full[:, rows][:, :, rows])


def test_computed_grams_are_exactly_symmetric(models):
    a, _ = models
    g = model_grams(detect(Checkpoint(a)), None)
    for x in (g.q, g.k):
        np.testing.assert_array_equal(x, x.transpose(0, 2, 1))


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


def test_unwritable_cache_warns_and_computes_without_it(tmp_path, models, capsys):
    a, b = models
    blocker = tmp_path / "file"
    blocker.write_text("x")
    got = awm_jax.compare(a, b, cache_dir=blocker / "sub")
    assert scores(got) == scores(awm_jax.compare(a, b, cache=False))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("awm_jax: warning: ") and "cannot write the fingerprint cache" in err[0]
    assert "--no-cache" in err[0]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWM_JAX_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("AWM_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "awm_jax"


# -- nothing read from the cache is trusted -------------------------------------------------------


def scores(result) -> dict:
    """Every field of a result but wall times, versions and whether the cache was hit."""
    d = result.to_dict()
    for model in ("model_a", "model_b"):
        d[model].pop("fingerprint_cached")
    return {k: v for k, v in d.items() if k not in ("timings", "environment")}


@pytest.fixture
def trio(tmp_path):
    """``a``, ``b`` derived from ``a``, ``c`` independent (same shapes: their files have one size)."""
    rng = np.random.default_rng(11)
    emb, qs, ks = random_model(rng, vocab=96, hidden=32, layers=3, q_dim=32, k_dim=16)
    a = save_llama(tmp_path / "a", emb, qs, ks)
    b = save_llama(tmp_path / "b", emb, [q + 0.05 * rng.standard_normal(q.shape).astype(np.float32) for q in qs], ks)
    emb_c, qs_c, ks_c = random_model(np.random.default_rng(12), vocab=96, hidden=32, layers=3, q_dim=32, k_dim=16)
    c = save_llama(tmp_path / "c", emb, qs_c, ks_c)
    return a, b, c


def entry(cache: Path, model: Path, kind: str = "qk") -> tuple[Path, Path]:
    """The index file and the fingerprint folder of ``model`` in ``cache``."""
    index = cache / "index" / f"{file_key(detect(Checkpoint(model)))}-{kind}-fold.json"
    return index, cache / "fingerprints" / json.loads(index.read_text())["content_key"]


def warnings(capsys) -> list[str]:
    """The stderr lines since the last call; each must be one ``awm_jax: warning:`` line."""
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("awm_jax: warning: ") for line in lines), lines
    return lines


def keep_times(path: Path):
    """Restores the access and modification times of ``path`` on exit (as ``cp -p`` would)."""
    st = path.stat()

    class Keep:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    return Keep()


def assert_heals(a, b, cache, clean, capsys, reason):
    """The next comparison warns once (``reason``), gives the clean scores and leaves a valid entry:
    the one after (a new process) hits the cache without a warning."""
    got = awm_jax.compare(a, b, cache_dir=cache)
    assert scores(got) == clean
    lines = warnings(capsys)
    assert len(lines) == 1 and reason in lines[0] and "computing it again" in lines[0], lines
    assert not got.model_b.fingerprint_cached
    cache_mod._VERIFIED.clear()
    cache_mod._WARNED.clear()
    again = awm_jax.compare(a, b, cache_dir=cache)
    assert scores(again) == clean and again.model_a.fingerprint_cached and again.model_b.fingerprint_cached
    assert warnings(capsys) == []
    assert not [p for p in (cache / "fingerprints").iterdir() if p.name.startswith(".tmp")]


def test_flipped_gram_value_is_caught(tmp_path, trio, capsys):
    a, b, _ = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    _, folder = entry(cache, b)
    gram = folder / "gram_q.f32"
    with keep_times(gram), open(gram, "r+b") as f:  # one float of layer 1 halved, times restored
        f.seek(32 * 32 * 4 + 40)
        value = np.frombuffer(f.read(4), np.float32)[0]
        f.seek(-4, os.SEEK_CUR)
        f.write(np.float32(value * 0.5).tobytes())
    cache_mod._VERIFIED.clear()
    assert_heals(a, b, cache, clean, capsys, "does not match its checksum")


def test_swapped_index_files_are_caught(tmp_path, trio, capsys):
    a, b, c = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    awm_jax.compare(a, c, cache_dir=cache)
    (index_b, _), (index_c, _) = entry(cache, b), entry(cache, c)
    tmp = index_b.read_bytes()
    index_b.write_bytes(index_c.read_bytes())
    index_c.write_bytes(tmp)
    assert_heals(a, b, cache, clean, capsys, "another checkpoint")


@pytest.mark.parametrize("forged", ["absolute", "relative", "upper", "short", "number", "other_model", "dotdot"])
def test_index_naming_anything_but_a_content_key_is_refused(tmp_path, trio, capsys, forged):
    a, b, c = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    awm_jax.compare(a, c, cache_dir=cache)
    index_b, folder_b = entry(cache, b)
    _, folder_c = entry(cache, c)
    outside = tmp_path / "forged"
    shutil.copytree(folder_c, outside)  # a complete, self-consistent fingerprint of another model
    record = json.loads(index_b.read_text())
    record["content_key"] = {"absolute": str(outside), "relative": f"../../{outside.name}",
                             "upper": folder_b.name.upper(), "short": folder_b.name[:-1], "number": 7,
                             "dotdot": f"{folder_b.name}/../{folder_c.name}",
                             "other_model": folder_c.name}[forged]
    index_b.write_text(json.dumps(record))
    reason = "is not the Gram of the checkpoint's weights" if forged == "other_model" else "not a content key"
    assert_heals(a, b, cache, clean, capsys, reason)
    assert entry(cache, c)[1] == folder_c and FingerprintCache(cache).lookup(detect(Checkpoint(c))) is not None


def test_rewritten_weights_with_restored_size_inode_and_mtime_are_recomputed(tmp_path, trio, capsys):
    a, b, c = trio
    cache = tmp_path / "cache"
    before = scores(awm_jax.compare(a, b, cache_dir=cache))
    weights_b, weights_c = b / "model.safetensors", c / "model.safetensors"
    st = weights_b.stat()
    assert st.st_size == weights_c.stat().st_size
    time.sleep(0.05)  # past the file system's timestamp granularity
    with keep_times(weights_b), open(weights_b, "r+b") as f:  # what cp -p / rsync -t leave behind
        f.write(weights_c.read_bytes())
    after = weights_b.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (st.st_size, st.st_ino, st.st_mtime_ns)
    got = awm_jax.compare(a, b, cache_dir=cache)
    assert not got.model_b.fingerprint_cached and got.model_a.fingerprint_cached
    assert scores(got) == scores(awm_jax.compare(a, b, cache=False)) != before
    assert warnings(capsys) == []


def test_zero_filled_gram_without_meta_is_replaced(tmp_path, trio, capsys):
    a, b, _ = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    _, folder = entry(cache, b)
    gram = folder / "gram_q.f32"
    gram.write_bytes(bytes(gram.stat().st_size))  # a power loss: the data never reached the disk
    (folder / "meta.json").unlink()
    assert_heals(a, b, cache, clean, capsys, "meta.json is missing")
    assert (folder / "meta.json").is_file() and np.fromfile(gram, np.float32).any()


@pytest.mark.parametrize("damage", ["truncated", "deleted", "extended", "directory", "symlink", "fifo"])
def test_damaged_gram_file_heals(tmp_path, trio, capsys, damage):
    a, b, c = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    awm_jax.compare(a, c, cache_dir=cache)
    _, folder = entry(cache, b)
    _, folder_c = entry(cache, c)
    gram = folder / "gram_k.f32"
    if damage == "truncated":
        os.truncate(gram, gram.stat().st_size // 2)
    elif damage == "extended":
        with open(gram, "ab") as f:
            f.write(b"\0" * 4)
    else:
        gram.unlink()
        if damage == "directory":
            gram.mkdir()
        elif damage == "symlink":  # to a file of the right size: not followed
            gram.symlink_to(folder_c / "gram_k.f32")
        elif damage == "fifo":
            os.mkfifo(gram)
    assert_heals(a, b, cache, clean, capsys, "gram_k.f32")


@pytest.mark.parametrize("damage", ["not_json", "fifo", "huge", "wrong_shape", "bad_checksum", "other_key"])
def test_damaged_meta_or_index_heals(tmp_path, trio, capsys, damage):
    a, b, c = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    awm_jax.compare(a, c, cache_dir=cache)
    index, folder = entry(cache, b)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "not_json":
        index.write_bytes(index.read_bytes()[:-3])
    elif damage == "fifo":
        meta_path.unlink()
        os.mkfifo(meta_path)
    elif damage == "huge":
        meta_path.write_bytes(b" " * (cache_mod.MAX_META_BYTES + 1))
    elif damage == "wrong_shape":
        meta_path.write_text(json.dumps({**meta, "n": 16}))
    elif damage == "bad_checksum":
        meta["files"]["gram_q.f32"]["xxh3_128"][0] = "0" * 32
        meta_path.write_text(json.dumps(meta))
    elif damage == "other_key":  # the folder of c renamed to b's key (b's removed)
        shutil.rmtree(folder)
        shutil.copytree(entry(cache, c)[1], folder)
    assert_heals(a, b, cache, clean, capsys, "")


def test_another_models_entry_relabelled_as_this_one_is_replaced(tmp_path, trio, capsys):
    a, b, c = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    awm_jax.compare(a, c, cache_dir=cache)
    index_b, folder_b = entry(cache, b)
    shutil.rmtree(folder_b)  # c's intact entry under b's key, its meta.json relabelled: every checksum holds
    shutil.copytree(entry(cache, c)[1], folder_b)
    meta = json.loads((folder_b / "meta.json").read_text())
    (folder_b / "meta.json").write_text(json.dumps({**meta, "content_key": folder_b.name}))
    assert_heals(a, b, cache, clean, capsys, "is not the Gram of the checkpoint's weights")
    index_b.unlink()  # and when the index is lost too, publishing does not keep the forged folder
    shutil.rmtree(folder_b)
    shutil.copytree(entry(cache, c)[1], folder_b)
    (folder_b / "meta.json").write_text(json.dumps({**meta, "content_key": folder_b.name}))
    cache_mod._VERIFIED.clear()
    cache_mod._WARNED.clear()
    got = awm_jax.compare(a, b, cache_dir=cache)
    assert scores(got) == clean and not got.model_b.fingerprint_cached
    lines = warnings(capsys)
    assert len(lines) == 1 and "is not the Gram of the checkpoint's weights" in lines[0], lines


def test_damaged_entry_in_an_unwritable_cache_is_computed_without_it(tmp_path, trio, capsys, monkeypatch):
    a, b, _ = trio
    cache = tmp_path / "cache"
    clean = scores(awm_jax.compare(a, b, cache=False))
    awm_jax.compare(a, b, cache_dir=cache)
    _, folder = entry(cache, b)
    os.truncate(folder / "gram_q.f32", 100)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cache_mod.tempfile, "mkdtemp", read_only)
    got = awm_jax.compare(a, b, cache_dir=cache)
    assert scores(got) == clean and got.model_a.fingerprint_cached and not got.model_b.fingerprint_cached
    lines = warnings(capsys)
    assert len(lines) == 2 and "computing it again" in lines[0] and "computing without it" in lines[1], lines


@pytest.mark.parametrize("where", ["gram", "parts"])  # a Gram's value, or a stored HSIC part (the file's end)
def test_cli_prints_one_warning_and_the_clean_scores(tmp_path, trio, capsys, where):
    a, b, _ = trio
    cache = tmp_path / "cache"
    assert main([str(a), str(b), "--no-cache", "--json", str(tmp_path / "clean.json"), "--quiet"]) == 0
    assert main([str(a), str(b), "--cache-dir", str(cache), "--quiet"]) == 0
    capsys.readouterr()
    _, folder = entry(cache, a)
    with open(folder / "gram_q.f32", "r+b") as f:
        f.seek(-4 if where == "parts" else 0, os.SEEK_END if where == "parts" else os.SEEK_SET)
        f.write(b"\x7f\x7f\x7f\x7f")
    cache_mod._VERIFIED.clear()
    assert main([str(a), str(b), "--cache-dir", str(cache), "--json", str(tmp_path / "got.json"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("awm_jax: warning: ") and "gram_q.f32" in err, err
    clean, got = (json.loads((tmp_path / name).read_text()) for name in ("clean.json", "got.json"))
    for d in (clean, got):
        for key in ("timings", "environment"):
            d.pop(key)
        for model in ("model_a", "model_b"):
            d[model].pop("fingerprint_cached")
    assert got == clean


def test_open_grams_recheck_files_replaced_while_in_use(tmp_path, trio):
    a, _, _ = trio
    cache = FingerprintCache(tmp_path / "cache")
    r = detect(Checkpoint(a))
    want = model_grams(r, None).chunk(0, 3)
    grams = model_grams(r, cache)
    gram = grams.folder / "gram_q.f32"
    copy = tmp_path / "copy"
    shutil.copyfile(gram, copy)
    os.replace(copy, gram)  # same bytes, another file (another process healed the entry): verified again
    for got, expected in zip(grams.chunk(0, 3), want):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(grams.padded([0, 1, 2], 3)[0], want[0])
    damaged = np.fromfile(gram, np.float32)
    damaged[5] += 1
    damaged.tofile(copy)
    os.replace(copy, gram)
    with pytest.raises(CacheError, match="changed while in use"):
        grams.chunk(0, 3)
    with pytest.raises(CacheError, match="changed while in use"):
        grams.padded([0, 1, 2], 3)


def test_verification_is_done_once_per_process(tmp_path, trio, monkeypatch):
    a, _, _ = trio
    cache = FingerprintCache(tmp_path / "cache")
    r = detect(Checkpoint(a))
    model_grams(r, cache)
    calls = []
    real = cache_mod.file_digests
    monkeypatch.setattr(cache_mod, "file_digests", lambda *args: calls.append(1) or real(*args))
    cache_mod._VERIFIED.clear()
    for _ in range(3):
        assert cache.lookup(r) is not None
    assert len(calls) == 2  # Q and K, hashed by the first lookup only


CONCURRENT = r"""
import sys
import awm_jax.fingerprint as fp
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import detect
g = fp.model_grams(detect(Checkpoint(sys.argv[1])), fp.FingerprintCache(sys.argv[2]))
q, k = g.chunk(0, g.num_layers)
print(float(q.sum()), float(k.sum()))
"""


def test_processes_fingerprinting_one_model_at_once(tmp_path, trio):
    a, _, _ = trio
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(a), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert all(err == "" for _, err in outs), outs
    want = model_grams(detect(Checkpoint(a)), None)
    assert len({out for out, _ in outs}) == 1
    got = FingerprintCache(cache).lookup(detect(Checkpoint(a)))
    assert got is not None
    for x, y in zip(got.chunk(0, 3), want.chunk(0, 3)):
        np.testing.assert_array_equal(x, y)
    assert not [p for p in (cache / "fingerprints").iterdir() if p.name.startswith(".tmp")]


def test_block_digests_streamed_equal_digests_of_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr("awm_jax.fingerprint._checksum.BLOCK_BYTES", 1000)
    rng = np.random.default_rng(0)
    for size in (1, 999, 1000, 1001, 3500):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        streamed = BlockDigest()
        pos = 0
        while pos < size:
            step = int(rng.integers(1, 1500))
            streamed.update(data[pos: pos + step])
            pos += step
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert file_digests(fd, size) == streamed.hexdigests()
            assert len(streamed.hexdigests()) == -(-size // 1000)
            wrong = ["0" * 64] * len(streamed.hexdigests())
            assert len(file_digests(fd, size, wrong)) == 1  # stops at the first mismatch
        finally:
            os.close(fd)
    assert BLOCK_BYTES == 32 * 1024 * 1024


def test_file_key_covers_the_change_time_and_a_content_probe(tmp_path, trio, monkeypatch):
    _, b, _ = trio
    weights = b / "model.safetensors"
    before = file_key(detect(Checkpoint(b)))
    assert file_key(detect(Checkpoint(b))) == before  # stable while nothing changes
    time.sleep(0.05)
    os.chmod(weights, weights.stat().st_mode)  # same mode, same bytes, same mtime: only ctime moves
    assert file_key(detect(Checkpoint(b))) != before
    after_chmod = file_key(detect(Checkpoint(b)))
    # Where the change time cannot be trusted (it is the same), the probe still sees the bytes change.
    resolved = detect(Checkpoint(b))
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with monkeypatch.context() as patch:
        patch.setattr(cache_mod.os, "stat", lambda path, *a, **k: st)  # every time as it was
        assert file_key(resolved) != after_chmod


def test_reads_fall_back_when_the_kernel_cannot_populate(tmp_path, models, monkeypatch):
    """An advice the kernel refuses (an older kernel's EINVAL) is dropped once, and reads go on."""
    import awm_jax.fingerprint.grams as grams_mod

    a, _ = models
    r = detect(Checkpoint(a))
    mem = model_grams(r, None)
    cached = model_grams(r, FingerprintCache(tmp_path / "c"))
    monkeypatch.setattr(grams_mod, "_POPULATE_READ", 9999)  # no such advice: EINVAL
    for upper in (False, True):
        (q,) = cached.take([1], upper)[:1]
        np.testing.assert_array_equal(q, np.triu(mem.q[1:2]) if upper else mem.q[1:2])
    assert grams_mod._POPULATE_READ is None
