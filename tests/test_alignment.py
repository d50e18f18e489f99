"""Dimension assignment: total cost against brute force, signs, rectangular shapes."""

import itertools

import numpy as np
import pytest

from awm_jax.numerics.alignment import assign_dimensions
from awm_jax.errors import NumericalError


def brute_force_cost(cos: np.ndarray) -> float:
    n_b, n_t = cos.shape
    cost = 1 - np.abs(cos)
    return min(sum(cost[p[j], j] for j in range(n_t)) for p in itertools.permutations(range(n_b), n_t))


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 3), (6, 6), (6, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_assignment_total_cost_is_optimal(shape, seed):
    cos = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    al = assign_dimensions(cos)
    assert sorted(set(al.perm.tolist())) == sorted(al.perm.tolist())  # distinct base dims
    got = float(np.sum(1 - np.abs(cos[al.perm, np.arange(shape[1])])))
    np.testing.assert_allclose(got, brute_force_cost(cos), rtol=0, atol=1e-6)


def test_signs_follow_matched_cosine_and_zero_gives_plus_one():
    cos = np.array([[0.0, 0.9, 0.0], [-0.8, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    al = assign_dimensions(cos)
    np.testing.assert_array_equal(al.perm[:2], [1, 0])
    np.testing.assert_array_equal(al.signs, [-1.0, 1.0, 1.0])
    assert al.diagnostics()["sign_flips"] == 1


def test_recovers_a_signed_permutation():
    rng = np.random.default_rng(0)
    n = 40
    perm = rng.permutation(n)
    signs = rng.choice([-1.0, 1.0], n)
    cos = 0.05 * rng.standard_normal((n, n))
    cos[perm, np.arange(n)] = 0.9 * signs
    al = assign_dimensions(cos.astype(np.float32))
    np.testing.assert_array_equal(al.perm, perm)
    np.testing.assert_array_equal(al.signs, signs)


def test_empty_and_non_finite():
    al = assign_dimensions(np.zeros((0, 0), np.float32))
    assert al.target_dims == 0
    with pytest.raises(NumericalError):
        assign_dimensions(np.array([[np.nan]], np.float32))
    with pytest.raises(ValueError):
        assign_dimensions(np.zeros((2, 3), np.float32))
