"""Layer pairing: both modes against brute force."""

import itertools

import numpy as np
import pytest

from awm_jax.numerics.layer_match import match_layers, monotone_matching


def total(grid, pairs):
    return sum(grid[i, j] for i, j in pairs)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (6, 2), (1, 4), (5, 5)])
@pytest.mark.parametrize("seed", range(5))
def test_monotone_is_optimal_and_ordered(shape, seed):
    grid = np.random.default_rng(seed).uniform(-1, 1, shape)
    pairs = monotone_matching(grid)
    m = min(shape)
    assert len(pairs) == m
    rows, cols = zip(*pairs)
    assert list(rows) == sorted(set(rows)) and list(cols) == sorted(set(cols))
    if shape[0] <= shape[1]:
        best = max(total(grid, list(zip(range(m), c))) for c in itertools.combinations(range(shape[1]), m))
    else:
        best = max(total(grid, list(zip(r, range(m)))) for r in itertools.combinations(range(shape[0]), m))
    np.testing.assert_allclose(total(grid, pairs), best, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_assignment_maximises_ignoring_order(seed):
    grid = np.random.default_rng(seed).uniform(-1, 1, (5, 3))
    pairs = match_layers(grid, "assignment")
    best = max(total(grid, list(zip(p, range(3)))) for p in itertools.permutations(range(5), 3))
    np.testing.assert_allclose(total(grid, pairs), best, atol=1e-12)


def test_equal_depth_pairs_by_index_and_bad_mode():
    grid = np.random.default_rng(0).uniform(size=(3, 3))
    assert match_layers(grid, "monotone") == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError):
        match_layers(grid, "nearest")
