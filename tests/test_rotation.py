"""Alignment modes: the dense residual rotation that defeats the paper's permutation alignment."""

import numpy as np
import pytest
from scipy.stats import ortho_group

import awm_jax
from awm_jax.numerics.alignment import choose_alignment
from conftest import random_model, save_llama


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
    paper = awm_jax.compare(base, rotated, cache=False)
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


def test_choose_alignment_rule():
    assert choose_alignment("assignment", 0.1, 0.9)[0] == "assignment"
    assert choose_alignment("auto", 0.1, 0.9)[0] == "orthogonal"
    assert choose_alignment("auto", 0.8, 0.9)[0] == "assignment"
    assert choose_alignment("auto", 0.1, 0.3)[0] == "assignment"
