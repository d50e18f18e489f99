"""Layer scoring: the groups closed under the mismatch shifts, and grouped scores against the
chunked path and a float64 reference written from the formula."""

from __future__ import annotations

import numpy as np
import pytest

from awm_jax.engine import layers
from awm_jax.engine.align import PairAlignment
from awm_jax.fingerprint import GramSet


def _closed(groups, layers_count, shifts):
    """Every layer in exactly one group, and each group mapped onto itself by every shift."""
    seen = sorted(i for g in groups for i in g)
    return seen == list(range(layers_count)) and all({(i + s) % layers_count for i in g} == set(g)
                                                     for g in groups for s in shifts)


@pytest.mark.parametrize("count", [18, 22, 32, 40, 80])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 16])
def test_half_turn_groups_are_closed_and_fit_the_chunk(count, chunk):
    shifts = layers.mismatch_shifts(count)
    groups = layers.shift_groups(count, shifts, chunk)
    assert groups is not None and _closed(groups, count, shifts)
    assert max(len(g) for g in groups) <= max(2, chunk - chunk % 2)


def test_no_groups_where_none_fits():
    assert layers.shift_groups(8, layers.mismatch_shifts(8), 4) is None  # every shift: every layer
    assert layers.shift_groups(21, layers.mismatch_shifts(21), 4) is None  # odd depth
    assert layers.shift_groups(8, layers.mismatch_shifts(8), 8) == (tuple(range(8)),)


def _cka64(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased linear CKA in float64, from Song et al.'s estimator as written."""
    def hsic(a, b):
        n = a.shape[0]
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
        one = np.ones(n)
        return (np.sum(a * b) + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ a @ b @ one)) / (n * (n - 3))
    k, l = k.astype(np.float64), l.astype(np.float64)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("count", [4, 18])
@pytest.mark.parametrize("chunk", [2, 64])  # several groups (18 layers) or none (4); one group of every layer
def test_grouped_scores_equal_the_reference_and_the_chunked_path(count, chunk, monkeypatch):
    rng = np.random.default_rng(count)
    n = 24

    def grams():
        w = rng.standard_normal((count, 40, n)).astype(np.float32)
        return np.einsum("lri,lrj->lij", w, w)

    base = grams()
    target = base + 0.5 * grams()  # related, so the matched scores differ from the mismatched ones
    gb, gt = GramSet(count, n, "qk", arrays=(base, base * 2)), GramSet(count, n, "qk", arrays=(target, target))
    align = PairAlignment(True, np.arange(n, dtype=np.int32), np.ones(n, np.float32), None, n, {}, {})
    shifts = layers.mismatch_shifts(count)

    monkeypatch.setattr(layers, "chunk_layers_for", lambda *a: chunk)
    grouped = layers.score_equal_depth(gb, gt, align)
    for i in range(count):
        assert grouped.wq[i] == pytest.approx(_cka64(base[i], target[i]), abs=2e-5)
        for s in shifts:
            want = (_cka64(base[i], target[(i + s) % count]) + _cka64(2 * base[i], target[(i + s) % count])) / 2
            assert grouped.mismatched[s][i] == pytest.approx(want, abs=2e-5)
    monkeypatch.setattr(layers, "shift_groups", lambda *a: None)  # the chunk-at-a-time path
    chunked = layers.score_equal_depth(gb, gt, align)
    np.testing.assert_allclose(grouped.wq, chunked.wq, atol=1e-5)  # float32 rounding: other batch shapes
    np.testing.assert_allclose(grouped.wk, chunked.wk, atol=1e-5)  # float32 rounding: other batch shapes
    for s in shifts:
        np.testing.assert_allclose(grouped.mismatched[s], chunked.mismatched[s], atol=1e-5)  # float32 rounding: other batch shapes


def _pair(rng, count, n_b, n_t):
    """Base Grams ``[count, n_b, n_b]``, a signed selection of ``n_t`` base dimensions, and target
    Grams related to the aligned base."""
    w = rng.standard_normal((count, 30, n_b)).astype(np.float32)
    perm = rng.permutation(n_b)[:n_t].astype(np.int32)
    signs = rng.choice([-1.0, 1.0], n_t).astype(np.float32)
    base = np.einsum("lri,lrj->lij", w, w)
    noise = rng.standard_normal((count, 30, n_t)).astype(np.float32)
    wt = w[:, :, perm] * signs + 0.7 * noise
    return base, perm, signs, np.einsum("lri,lrj->lij", wt, wt)


@pytest.mark.parametrize("count, chunk", [(5, 64), (18, 2)])
def test_signed_selection_scores_match_float64_and_the_rotation_path(count, chunk, monkeypatch):
    """The fused pass (aligned base never stored, targets in upper form) against the float64
    formula on the aligned Grams, and against the rotation path given the same map as a matrix."""
    rng = np.random.default_rng(count)
    n_b, n_t = 20, 16
    base, perm, signs, target = _pair(rng, count, n_b, n_t)
    gb, gt = GramSet(count, n_b, "qk", arrays=(base, base)), GramSet(count, n_t, "qk", arrays=(target, 3 * target))
    monkeypatch.setattr(layers, "chunk_layers_for", lambda *a: chunk)
    align = PairAlignment(True, perm, signs, None, n_b, {}, {})
    got = layers.score_equal_depth(gb, gt, align)
    aligned = base[:, perm][:, :, perm] * np.outer(signs, signs)
    for i in range(count):
        assert got.wq[i] == pytest.approx(_cka64(aligned[i], target[i]), abs=2e-5)
        for s in layers.mismatch_shifts(count):
            assert got.mismatched[s][i] == pytest.approx(_cka64(aligned[i], target[(i + s) % count]), abs=2e-5)
    matrix = np.zeros((n_b, n_t), np.float32)
    matrix[perm, np.arange(n_t)] = signs
    rotated = layers.score_equal_depth(gb, gt, PairAlignment(True, perm, signs, matrix, n_b, {}, {}))
    np.testing.assert_allclose(rotated.wq, got.wq, atol=1e-5)
    np.testing.assert_allclose(rotated.wk, got.wk, atol=1e-5)


def test_layer_scores_compile_once_per_shape(monkeypatch):
    """No retracing across groups or layers: a second pair of the same widths, and a deeper one
    with groups of the same size, compile nothing new."""
    from conftest import count_compilations

    monkeypatch.setattr(layers, "chunk_layers_for", lambda *a: 2)  # half-turn groups of two layers
    rng = np.random.default_rng(5)

    def scored(count):
        base, perm, signs, target = _pair(rng, count, 26, 26)
        gb, gt = GramSet(count, 26, "qk", arrays=(base, base)), GramSet(count, 26, "qk", arrays=(target, target))
        return layers.score_equal_depth(gb, gt, PairAlignment(True, perm, signs, None, 26, {}, {}))

    with count_compilations() as first:
        scored(18)
    with count_compilations() as again:
        scored(18)
        scored(26)
    assert len(first) > 0 and len(again) == 0
