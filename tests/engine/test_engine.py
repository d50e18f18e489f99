"""End-to-end properties of compare() on random weights (docs/method.md, "Why it works")."""

import dataclasses
import json

import numpy as np
import pytest
from scipy.stats import ortho_group

import awm_jax
from conftest import count_compilations, mlp_tensors, random_model, save_llama


@pytest.fixture
def base(tmp_path):
    rng = np.random.default_rng(0)
    emb, qs, ks = random_model(rng, vocab=300, hidden=64, layers=3, q_dim=64, k_dim=32)
    return emb, qs, ks, save_llama(tmp_path / "base", emb, qs, ks)


def score(a, b, **kw):
    return awm_jax.compare(a, b, cache=False, **kw)


@pytest.mark.parametrize("c", [0.01, 7.0])
def test_qk_scaling_leaves_score_at_one(tmp_path, base, c):
    emb, qs, ks, path = base
    other = save_llama(tmp_path / "scaled", emb, [q * c for q in qs], [k / c for k in ks])
    r = score(path, other)
    np.testing.assert_allclose([r.wq, r.wk, r.mean], 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_residual_permutation_and_sign_leaves_score_at_one(tmp_path, base, seed):
    emb, qs, ks, path = base
    rng = np.random.default_rng(seed)
    perm = rng.permutation(emb.shape[1])
    signs = rng.choice([-1.0, 1.0], emb.shape[1]).astype(np.float32)
    t = lambda w: w[:, perm] * signs  # noqa: E731 - same map on every matrix's residual side
    other = save_llama(tmp_path / "perm", t(emb), [t(q) for q in qs], [t(k) for k in ks])
    r = score(path, other)
    np.testing.assert_allclose([r.wq, r.wk], 1.0, atol=1e-5)
    assert r.alignment["sign_flips"] == int((signs < 0).sum())


def test_orthogonal_output_transform_leaves_score_at_one(tmp_path, base):
    emb, qs, ks, path = base
    rq = ortho_group.rvs(qs[0].shape[0], random_state=1).astype(np.float32)
    rk = ortho_group.rvs(ks[0].shape[0], random_state=2).astype(np.float32)
    other = save_llama(tmp_path / "orth", emb, [rq @ q for q in qs], [rk @ k for k in ks])
    r = score(path, other)
    np.testing.assert_allclose([r.wq, r.wk], 1.0, atol=1e-5)


def test_model_against_itself_reordered_vocabulary(tmp_path, base):
    emb, qs, ks, path = base
    order = np.random.default_rng(3).permutation(emb.shape[0])
    tokens = [f"tok{i}" for i in order]
    other = save_llama(tmp_path / "revocab", emb[order], qs, ks, tokens=tokens)
    np.testing.assert_allclose(score(path, other).mean, 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_independent_random_models_score_near_zero(tmp_path, base, seed):
    _, _, _, path = base
    emb, qs, ks = random_model(np.random.default_rng(100 + seed), vocab=300, hidden=64, layers=3, q_dim=64, k_dim=32)
    r = score(path, save_llama(tmp_path / f"ind{seed}", emb, qs, ks))
    assert abs(r.mean) < 0.05 and abs(r.wq) < 0.05 and abs(r.wk) < 0.05


def test_width_and_depth_differences_and_layer_keys(tmp_path, base):
    emb, qs, ks, path = base
    keep = np.sort(np.random.default_rng(4).permutation(64)[:48])
    narrow = save_llama(tmp_path / "narrow", emb[:, keep], [q[:, keep] for q in qs], [k[:, keep] for k in ks])
    r = score(narrow, path)  # B is wider, so B is the base
    assert r.base == "b" and r.alignment["matched_dims"] == 48
    assert r.mean > 0.5
    shallow = save_llama(tmp_path / "shallow", emb, [qs[0], qs[2]], [ks[0], ks[2]])
    for mode in ("assignment", "monotone"):
        r = score(path, shallow, layer_match=mode)
        assert r.layer_match == mode
        assert [(l.a_layer, l.b_layer) for l in r.layers] == [(0, 0), (2, 1)]
        np.testing.assert_allclose(r.mean, 1.0, atol=1e-5)


def test_result_is_frozen_and_json_serialisable(base):
    *_, path = base
    r = score(path, path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mean = 0.0
    d = json.loads(r.to_json())
    assert d["verdict"] == "derived" and d["layer_match"] == "equal-depth"
    assert set(d["per_layer_wq"]) == {"0", "1", "2"}
    assert d["environment"]["precision"] == "HIGHEST" and "jax" in d["environment"]
    assert {"embedding_cosine_s", "assignment_s", "gram_s", "scores_s", "compile_s"} <= set(d["timings"])


def test_two_folders_with_the_same_name_are_two_models(tmp_path, base):
    emb, qs, ks, _ = base
    a = save_llama(tmp_path / "x" / "model", emb, qs, ks)
    e2, q2, k2 = random_model(np.random.default_rng(9), vocab=300, hidden=64, layers=3, q_dim=64, k_dim=32)
    b = save_llama(tmp_path / "y" / "model", e2, q2, k2)
    r = awm_jax.compare(a, b)  # with the cache on: keyed by content and file identity, not by name
    assert abs(r.mean) < 0.05 and r.model_a.path != r.model_b.path


def test_locate_model_sends_only_hub_ids_to_the_hub(tmp_path, monkeypatch):
    import awm_jax.io.hub
    from awm_jax.engine import locate_model

    calls = []
    monkeypatch.setattr(awm_jax.io.hub, "resolve_model", lambda spec, fetch="full": calls.append((spec, fetch)) or tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert locate_model("owner/name").resolve() == tmp_path / "owner" / "name"  # an existing folder wins
    assert str(locate_model("missing")) == "missing"  # left to the checkpoint reader to report
    assert calls == []
    assert locate_model("org/model@main") == tmp_path and calls == [("org/model@main", "partial")]
    assert locate_model("org/model", fetch="full") == tmp_path and calls[-1] == ("org/model", "full")


def _with_mlp(folder, emb, qs, ks, gates, ups):
    return save_llama(folder, emb, qs, ks, extra=mlp_tensors(gates, ups))


def test_mlp_evidence_follows_the_same_alignment(tmp_path):
    rng = np.random.default_rng(11)
    emb, qs, ks = random_model(rng, vocab=300, hidden=64, layers=3, q_dim=64, k_dim=32)
    gates = [rng.standard_normal((128, 64)).astype(np.float32) for _ in qs]
    ups = [rng.standard_normal((128, 64)).astype(np.float32) for _ in qs]
    a = _with_mlp(tmp_path / "a", emb, qs, ks, gates, ups)
    perm = rng.permutation(64)
    t = lambda w: w[:, perm]  # noqa: E731
    b = _with_mlp(tmp_path / "b", t(emb), [t(q) for q in qs], [t(k) for k in ks], [t(g) for g in gates], [t(u) for u in ups])
    r = awm_jax.compare(a, b, mlp=True)
    np.testing.assert_allclose([r.mlp] + [l.mlp for l in r.layers], 1.0, atol=1e-5)
    e2, q2, k2 = random_model(np.random.default_rng(12), vocab=300, hidden=64, layers=3, q_dim=64, k_dim=32)
    g2 = [rng.standard_normal((128, 64)).astype(np.float32) for _ in q2]
    c = _with_mlp(tmp_path / "c", e2, q2, k2, g2, g2)
    assert abs(awm_jax.compare(a, c, mlp=True).mlp) < 0.05
    assert awm_jax.compare(a, b).mlp is None


def test_prefetched_reads_in_order_one_ahead():
    from awm_jax.engine import prefetched as _prefetched

    started, consumed = [], []

    def read(i):
        started.append(i)
        return i * 10

    for value in _prefetched(read, [(i,) for i in range(5)]):
        # the read of the next item may have started, never the one after it
        assert max(started) <= len(consumed) + 1
        consumed.append(value)
    assert consumed == [0, 10, 20, 30, 40]
    assert list(_prefetched(read, [])) == []


def test_no_retracing_across_pairs_of_the_same_shapes(tmp_path):
    """The engine compiles once per shape: a second pair of the same widths and depth, with other
    weights and another alignment, compiles nothing."""
    rng = np.random.default_rng(21)
    folders = [save_llama(tmp_path / str(i), *random_model(rng, vocab=300, hidden=36, layers=5, q_dim=32, k_dim=16))
               for i in range(4)]
    for mode in ("assignment", "orthogonal"):
        with count_compilations() as first:
            awm_jax.compare(folders[0], folders[1], cache=False, alignment=mode)
        assert len(first) > 0, "the counter sees the first pair's compilations"
        with count_compilations() as compiled:
            awm_jax.compare(folders[2], folders[3], cache=False, alignment=mode)
        assert compiled == [], mode
