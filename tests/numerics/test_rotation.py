"""Alignment modes: the dense residual rotation that defeats the paper's permutation alignment,
and ``auto`` on anisotropic (real-model-like) embeddings after norm folding and rotation."""

import numpy as np
import pytest
from scipy.stats import ortho_group

import awm_jax
from awm_jax.numerics.auto_alignment import (
    AUTO_MAX_PERMUTATION_SHARE,
    AUTO_MIN_GAIN,
    AUTO_MIN_ROTATION_CKA,
    AUTO_MIN_TOKEN_SIMILARITY,
    AlignmentProbe,
    auto_alignment,
    choose_alignment,
    probe_pairs,
    token_sample_size,
    token_similarity,
)
from conftest import random_model, save_llama

HIDDEN, LAYERS, VOCAB = 48, 3, 400


def anisotropic_model(seed: int, hidden: int = HIDDEN, layers: int = LAYERS):
    """A model whose embedding is like a real one's: a shared mean direction and three columns at
    10-50x the scale of the others; gains drawn from [-0.3, 1.5] (trained gains are never 1)."""
    rng = np.random.default_rng(seed)
    emb, qs, ks = random_model(rng, vocab=VOCAB, hidden=hidden, layers=layers, q_dim=hidden, k_dim=16)
    cols = rng.choice(hidden, 3, replace=False)
    emb[:, cols] *= rng.uniform(10, 50, 3).astype(np.float32)
    emb += 8.0 * rng.standard_normal(hidden).astype(np.float32)[None, :]
    gains = [rng.uniform(-0.3, 1.5, hidden).astype(np.float32) for _ in range(layers)]
    return emb, qs, ks, gains


def save_with_gains(folder, emb, qs, ks, gains):
    """A Llama checkpoint with per-layer ``input_layernorm`` gains."""
    extra = [(f"model.layers.{i}.input_layernorm.weight", g.shape, np.float32, (lambda a=g: a))
             for i, g in enumerate(gains)]
    return save_llama(folder, emb, qs, ks, extra=extra)


def fold(qs, ks, gains):
    """The folded copy's projections ``W diag(g)`` (its gains become 1)."""
    return [q * g[None, :] for q, g in zip(qs, gains)], [k * g[None, :] for k, g in zip(ks, gains)]


def ones(gains):
    return [np.ones_like(g) for g in gains]


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    emb, qs, ks = random_model(rng, vocab=400, hidden=48, layers=2, q_dim=48, k_dim=16)
    rot = ortho_group.rvs(48, random_state=1).astype(np.float32)
    base = save_llama(tmp_path / "base", emb, qs, ks)
    rotated = save_llama(tmp_path / "rot", emb @ rot, [q @ rot for q in qs], [k @ rot for k in ks])
    e2, q2, k2 = random_model(np.random.default_rng(7), vocab=400, hidden=48, layers=2, q_dim=48, k_dim=16)
    independent = save_llama(tmp_path / "ind", e2, q2, k2)
    return base, rotated, independent


def test_rotation_defeats_assignment_but_not_orthogonal_or_auto(pair):
    base, rotated, _ = pair
    paper = awm_jax.compare(base, rotated, cache=False, alignment="assignment")
    assert paper.mean < 0.3 and paper.alignment["used"] == "assignment"
    for mode in ("orthogonal", "auto"):
        r = awm_jax.compare(base, rotated, cache=False, alignment=mode)
        assert r.alignment["used"] == "orthogonal"
        np.testing.assert_allclose([r.wq, r.wk], 1.0, atol=1e-4)
        assert r.alignment["rotation_fit"] == pytest.approx(1.0, abs=1e-5)


def test_auto_keeps_the_paper_alignment_for_permuted_and_independent_models(pair, tmp_path):
    base, _, independent = pair
    assert awm_jax.compare(base, base, cache=False, alignment="auto").alignment["used"] == "assignment"
    r = awm_jax.compare(base, independent, cache=False, alignment="auto")
    assert r.alignment["used"] == "assignment" and abs(r.mean) < 0.1


@pytest.fixture(scope="module")
def anisotropic(tmp_path_factory):
    """A base with trained-like gains, its folded copy, folded and rotated copy, folded, rotated and
    fine-tuned copy, signed-permuted copy, and independent models of the same shapes."""
    root = tmp_path_factory.mktemp("aniso")
    emb, qs, ks, gains = anisotropic_model(0)
    fq, fk = fold(qs, ks, gains)
    rot = ortho_group.rvs(HIDDEN, random_state=1).astype(np.float32)
    rng = np.random.default_rng(3)
    noisy = [w + 0.3 * np.abs(w).mean() * rng.standard_normal(w.shape).astype(np.float32) for w in fq + fk]
    perm = rng.permutation(HIDDEN)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), HIDDEN)
    models = {
        "base": save_with_gains(root / "base", emb, qs, ks, gains),
        "folded": save_with_gains(root / "folded", emb, fq, fk, ones(gains)),
        "folded_rotated": save_with_gains(root / "fr", emb @ rot, [q @ rot for q in fq], [k @ rot for k in fk],
                                          ones(gains)),
        "folded_rotated_tuned": save_with_gains(root / "frt", emb @ rot, [w @ rot for w in noisy[:LAYERS]],
                                                [w @ rot for w in noisy[LAYERS:]], ones(gains)),
        "folded_rotated_pruned": save_with_gains(root / "frp", emb @ rot, [fq[0] @ rot, fq[2] @ rot],
                                                 [fk[0] @ rot, fk[2] @ rot], ones(gains)[:2]),
        "permuted": save_with_gains(root / "perm", emb[:, perm] * signs, [q[:, perm] * signs for q in qs],
                                    [k[:, perm] * signs for k in ks], [g[perm] for g in gains]),
    }
    for seed in (11, 12, 13):
        e, q, k, g = anisotropic_model(seed)
        models[f"independent{seed}"] = save_with_gains(root / f"ind{seed}", e, q, k, g)
    return models


def test_norm_folded_copy_scores_one_by_default_but_not_in_the_paper_mode(anisotropic):
    r = awm_jax.compare(anisotropic["base"], anisotropic["folded"], cache=False)
    assert r.alignment["norm_gains"] == "fold"
    np.testing.assert_allclose([r.wq, r.wk, r.mean], 1.0, atol=1e-5)
    paper = awm_jax.compare(anisotropic["base"], anisotropic["folded"], cache=False, norm_gains="ignore")
    assert paper.alignment["norm_gains"] == "ignore" and paper.mean < 0.99


def test_auto_undoes_fold_and_rotate_on_an_anisotropic_embedding(anisotropic):
    r = awm_jax.compare(anisotropic["base"], anisotropic["folded_rotated"], cache=False, alignment="auto")
    al = r.alignment
    # The embedding fits alone would have kept the permutation (the rule auto used to follow):
    assert al["permutation_fit"] >= 0.5 * al["rotation_fit"]
    assert al["used"] == "orthogonal" and "rotated" in al["reason"]
    assert al["probe_rotation"] >= AUTO_MIN_ROTATION_CKA and al["probe_permutation"] < 0.1
    assert al["probe_rotation"] - al["probe_permutation"] >= al["probe_margin"] >= AUTO_MIN_GAIN
    np.testing.assert_allclose([r.wq, r.wk, r.mean], 1.0, atol=1e-5)
    paper = awm_jax.compare(anisotropic["base"], anisotropic["folded_rotated"], cache=False, alignment="assignment")
    assert paper.mean < 0.5
    assert awm_jax.compare(anisotropic["base"], anisotropic["folded_rotated"], cache=False).mean == r.mean  # default


def test_auto_follows_a_fine_tuned_rotated_copy_and_keeps_a_permuted_one(anisotropic):
    tuned = awm_jax.compare(anisotropic["base"], anisotropic["folded_rotated_tuned"], cache=False, alignment="auto")
    forced = awm_jax.compare(anisotropic["base"], anisotropic["folded_rotated_tuned"], cache=False,
                             alignment="orthogonal")
    assert tuned.alignment["used"] == "orthogonal" and tuned.mean == pytest.approx(forced.mean, abs=1e-6)
    assert tuned.mean > 0.5
    permuted = awm_jax.compare(anisotropic["base"], anisotropic["permuted"], cache=False, alignment="auto")
    assert permuted.alignment["used"] == "assignment"
    np.testing.assert_allclose(permuted.mean, 1.0, atol=1e-5)
    # the permutation's probe is read from its layer scores; the screen stops there (no rotation)
    al = permuted.alignment
    assert al["probe_rotation"] is None and al["token_similarity"] is None and "rotation_fit" not in al
    probed = [l for l in permuted.layers if [l.a_layer, l.b_layer] in al["probe_layers"]]
    assert al["probe_permutation"] == pytest.approx(np.mean([x for l in probed for x in (l.wq, l.wk)]), abs=1e-12)


def test_auto_probes_layers_at_the_same_relative_depth_for_a_pruned_copy(anisotropic):
    r = awm_jax.compare(anisotropic["base"], anisotropic["folded_rotated_pruned"], cache=False, alignment="auto")
    assert r.alignment["probe_layers"] == [[0, 0], [2, 1]] and r.alignment["used"] == "orthogonal"
    assert [(l.a_layer, l.b_layer) for l in r.layers] == [(0, 0), (2, 1)]
    np.testing.assert_allclose(r.mean, 1.0, atol=1e-5)


def test_auto_leaves_independent_pairs_where_the_paper_puts_them(anisotropic):
    """No independent pair moves towards derived: auto picks the permutation (the screen keeps it,
    or the probe's gap is below the margin) and the mean score is the paper alignment's."""
    names = ["base", "folded_rotated"] + [n for n in anisotropic if n.startswith("independent")]
    changes = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if {a, b} == {"base", "folded_rotated"}:
                continue
            auto = awm_jax.compare(anisotropic[a], anisotropic[b], cache=False, alignment="auto")
            paper = awm_jax.compare(anisotropic[a], anisotropic[b], cache=False, alignment="assignment")
            if auto.alignment["probe_rotation"] is None:  # screened: the rotation was not computed
                assert auto.alignment["token_similarity"] < AUTO_MIN_TOKEN_SIMILARITY
                assert "rotation_fit" not in auto.alignment
            else:
                gap = auto.alignment["probe_rotation"] - auto.alignment["probe_permutation"]
                assert abs(gap) < auto.alignment["probe_margin"] / 2
            assert auto.alignment["used"] == "assignment"
            changes.append(abs(auto.mean - paper.mean))
            assert abs(auto.mean) < 0.1
    assert len(changes) == 9 and max(changes) == 0.0


def test_probe_pairs_are_evenly_spaced_at_the_same_relative_depth():
    assert probe_pairs(8, 8) == ((0, 0), (2, 2), (5, 5), (7, 7))
    assert probe_pairs(16, 12) == ((0, 0), (5, 4), (10, 7), (15, 11))
    assert probe_pairs(2, 2) == ((0, 0), (1, 1))
    assert probe_pairs(1, 5) == ((0, 0),)


def test_choose_alignment_rule():
    probe = lambda p, r, margin=AUTO_MIN_GAIN: AlignmentProbe(((0, 0),), p, r, margin)  # noqa: E731
    assert choose_alignment(probe(0.01, 1.0))[0] == "orthogonal"
    assert choose_alignment(probe(0.98, 0.99))[0] == "assignment"
    # The rotation must reach a derived pair's agreement ...
    low = AUTO_MIN_ROTATION_CKA
    assert choose_alignment(probe(0.0, low * 0.99))[0] == "assignment"
    assert choose_alignment(probe(0.0, low * 1.01))[0] == "orthogonal"
    # ... that the permutation does not half explain (real unrelated pairs: both probes of one size) ...
    share = AUTO_MAX_PERMUTATION_SHARE
    assert choose_alignment(probe(0.6 * share * 1.01, 0.6))[0] == "assignment"
    assert choose_alignment(probe(0.6 * share * 0.99, 0.6))[0] == "orthogonal"
    # ... by more than the probe's noise (wide for narrow models).
    assert choose_alignment(probe(0.0, 0.35, margin=0.4))[0] == "assignment"
    with pytest.raises(ValueError, match="rotation"):
        choose_alignment(probe(0.0, None))


def test_auto_computes_the_rotation_only_when_the_screen_passes():
    calls = []

    def rotation():
        calls.append(1)
        return 0.9

    pairs = ((0, 0),)
    # the permutation already agrees: no rotation could be preferred, nothing else is computed
    used, reason, probe = auto_alignment(pairs, 64, AUTO_MAX_PERMUTATION_SHARE + 0.01,
                                         lambda: pytest.fail("similarity computed"), rotation)
    assert used == "assignment" and not calls and probe.rotation is None and probe.token_similarity is None
    assert "not tried" in reason
    # the embeddings are not rotations of each other
    used, reason, probe = auto_alignment(pairs, 64, 0.0, lambda: AUTO_MIN_TOKEN_SIMILARITY - 0.01, rotation)
    assert used == "assignment" and not calls and probe.rotation is None and "token similarity" in reason
    # both conditions of a rotated copy hold: the rotation is fitted and the probe decides
    used, reason, probe = auto_alignment(pairs, 64, 0.0, lambda: AUTO_MIN_TOKEN_SIMILARITY, rotation)
    assert used == "orthogonal" and calls == [1] and probe.rotation == 0.9


def _hsic_u(k, l):
    """Unbiased HSIC (Song et al. 2012) straight from its formula, float64."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    return (np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3))


def _token_cka_reference(ea, eb, count):
    """Unbiased CKA of the token Grams over the rows ``token_similarity`` samples (seed 0)."""
    pick = np.sort(np.random.default_rng(0).choice(ea.shape[0], size=count, replace=False))
    a, b = ea[pick].astype(np.float64), eb[pick].astype(np.float64)
    k, l = a @ a.T, b @ b.T
    return _hsic_u(k, l) / np.sqrt(_hsic_u(k, k) * _hsic_u(l, l))


def test_token_similarity_matches_the_formula_and_ignores_rotation_permutation_and_scale():
    rng = np.random.default_rng(5)
    emb, _, _, _ = anisotropic_model(4)
    other, _, _, _ = anisotropic_model(9)
    ids = np.arange(emb.shape[0])
    assert token_sample_size(emb.shape[0]) == 256 and token_sample_size(70) == 64 and token_sample_size(5000) == 2048
    got = token_similarity(emb, other, ids, ids)
    assert got == pytest.approx(np.clip(_token_cka_reference(emb, other, 256), 0, 1), abs=1e-4)
    assert got < AUTO_MIN_TOKEN_SIMILARITY
    half = emb.copy()  # a half-related embedding scores in between
    half[:, : HIDDEN // 2] = other[:, : HIDDEN // 2]
    assert token_similarity(emb, half, ids, ids) == pytest.approx(_token_cka_reference(emb, half, 256), abs=1e-4)
    rot = ortho_group.rvs(HIDDEN, random_state=2)
    perm = rng.permutation(HIDDEN)
    for copy in (emb @ rot, emb[:, perm] * -1.0, emb * 2.0**60, emb * 2.0**-60, emb + 100.0):
        assert token_similarity(emb, copy.astype(np.float32), ids, ids) == pytest.approx(1.0, abs=1e-5)
    # the same tokens on both sides, wherever their rows are
    shuffled = rng.permutation(ids)
    assert token_similarity(emb[shuffled], emb, np.argsort(shuffled), ids) == pytest.approx(1.0, abs=1e-5)
    # unrelated wide embeddings over fewer rows than dimensions: near 0 (a plain RV coefficient is not)
    wide_a, wide_b = rng.standard_normal((300, 1024)), rng.standard_normal((300, 1024))
    assert token_similarity(wide_a, wide_b, np.arange(300), np.arange(300)) < 0.1


@pytest.mark.parametrize("a,b,screened", [("stories260K", "owngpt_pretrained", True),
                                          ("babyllama_tok105", "babyllama_tok361", False)])
def test_auto_keeps_the_permutation_for_real_independent_models(a, b, screened):
    """Independent small real models (../shared/wild): either their token similarity is too low for
    rotated copies (the rotation is not computed), or the rotation raises their probe well past its
    noise margin (a rule on the difference alone would switch, and move them towards derived), yet
    not to a derived pair's agreement, or not beyond the permutation's own share of it."""
    from conftest import SHARED

    wild = SHARED / "wild"
    if not (wild / a / "config.json").is_file():
        pytest.skip("../shared/wild is not present")
    r = awm_jax.compare(wild / a, wild / b, cache=False, alignment="auto")
    al = r.alignment
    assert al["used"] == "assignment"
    if screened:
        assert al["probe_rotation"] is None and al["token_similarity"] < AUTO_MIN_TOKEN_SIMILARITY
    else:
        assert al["token_similarity"] >= AUTO_MIN_TOKEN_SIMILARITY
        assert al["probe_rotation"] - al["probe_permutation"] > al["probe_margin"]
    assert r.mean == awm_jax.compare(wild / a, wild / b, cache=False, alignment="assignment").mean
