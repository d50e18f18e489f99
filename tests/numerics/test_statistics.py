"""Statistics: the signed reference z-score and the calibrated cross-layer null."""

import numpy as np
import pytest

from awm_jax.numerics.layer_match import match_layers
from awm_jax.numerics.statistics import (
    CALIBRATED_ALPHA,
    cross_layer_test,
    matching_null_test,
    verdict,
    z_reference,
)


def test_reference_z_is_signed_and_verdict_thresholds():
    assert z_reference(0.00375) == 0.0
    assert z_reference(-0.05) < 0
    assert verdict(z_reference(-0.05)) == "independent"  # a clearly negative score is no evidence
    assert verdict(10.0) == "derived" and verdict(3.0) == "independent" and verdict(5.0) == "inconclusive"


def test_cross_layer_null_is_calibrated_when_matched_layers_are_like_mismatched_ones():
    rng = np.random.default_rng(0)
    layers = 12
    p = []
    for _ in range(2000):
        grid = 0.3 + 0.05 * rng.standard_normal((layers, layers))  # shared structure, no inheritance
        off = grid[~np.eye(layers, dtype=bool)]
        p.append(cross_layer_test(np.diag(grid), off).p_value)
    p = np.array(p)
    assert (p < 0.05).mean() == pytest.approx(0.05, abs=0.02)
    assert (p < 0.01).mean() <= 0.02


def test_cross_layer_null_detects_inherited_layers_and_needs_enough_layers():
    rng = np.random.default_rng(1)
    grid = 0.3 + 0.05 * rng.standard_normal((6, 6))
    np.fill_diagonal(grid, 0.9)
    t = cross_layer_test(np.diag(grid), grid[~np.eye(6, dtype=bool)])
    assert t.p_value < 1e-6 and t.verdict == "derived" and t.z > 5
    few = cross_layer_test(np.array([0.9, 0.9]), np.array([0.3, 0.3]))
    assert few.verdict == "undetermined" and np.isnan(few.p_value)


@pytest.mark.parametrize("mode", ["assignment", "monotone"])
def test_matching_null_accounts_for_the_maximisation(mode):
    rng = np.random.default_rng(2)
    false_positives = 0
    for _ in range(40):
        grid = 0.2 + 0.05 * rng.standard_normal((8, 5))
        t = matching_null_test(grid, match_layers(grid, mode), mode, seed=3)
        false_positives += t.p_value < CALIBRATED_ALPHA
    assert false_positives <= 1
    grid = 0.2 + 0.05 * rng.standard_normal((24, 16))
    keep = np.sort(rng.permutation(24)[:16])
    grid[keep, range(16)] = 0.95  # a depth-pruned derivative: 16 of 24 layers kept
    t = matching_null_test(grid, match_layers(grid, mode), mode)
    assert t.p_value < 1e-6 and t.verdict == "derived"
    small = 0.2 + 0.05 * rng.standard_normal((4, 3))
    small[[0, 1, 3], range(3)] = 0.95  # 3 of 4 layers: too few cells for strong evidence
    assert matching_null_test(small, match_layers(small, mode), mode).p_value > 1e-6


def test_small_but_significant_layer_structure_is_not_called_derived():
    rng = np.random.default_rng(4)
    grid = 0.02 + 0.002 * rng.standard_normal((8, 8))
    np.fill_diagonal(grid, 0.07)  # models trained alike: position-specific structure, no inheritance
    t = cross_layer_test(np.diag(grid), grid[~np.eye(8, dtype=bool)])
    assert t.p_value < 1e-6 and t.verdict == "inconclusive"


def test_the_mismatched_band_is_stored_with_the_test():
    """Reports draw the band where the mismatched layer pairs score: their mean and 5-95th percentiles."""
    mismatched = np.linspace(0.0, 1.0, 101)[::-1]  # percentiles of 0, 0.01, ..., 1 are exact
    t = cross_layer_test(np.array([0.9, 0.8, 0.95]), mismatched)
    assert (t.mismatched_mean, t.mismatched_low, t.mismatched_high) == pytest.approx((0.5, 0.05, 0.95), abs=1e-12)
    assert t.mismatched_mean == t.null_mean and t.to_dict()["mismatched_high"] == pytest.approx(0.95, abs=1e-12)
    few = cross_layer_test(np.array([0.9, 0.9]), np.array([0.3, 0.5]))
    assert few.verdict == "undetermined" and few.mismatched_mean == pytest.approx(0.4, abs=1e-12)
    none = cross_layer_test(np.array([0.9]), np.empty(0)).to_dict()
    assert none["mismatched_low"] is None and none["mismatched_mean"] is None
    grid = np.arange(12.0).reshape(4, 3) / 12
    pairs = match_layers(grid, "assignment")
    t = matching_null_test(grid, pairs, "assignment")
    off = np.array([grid[i, j] for i in range(4) for j in range(3) if (i, j) not in set(pairs)])
    assert t.mismatched_mean == pytest.approx(off.mean(), abs=1e-12) and t.mismatched_mean != t.null_mean
    assert t.mismatched_low == pytest.approx(np.sort(off)[0] + 0.05 * (off.size - 1) * (np.sort(off)[1] - np.sort(off)[0]), abs=1e-12)


def test_verdict_bounds_give_the_verdict_of_the_p_value_rule():
    """A statistic above ``derived_above`` is derived, below ``independent_below`` independent, as
    the p-value rule decides (random nulls, statistics on both sides of each bound)."""
    from awm_jax.numerics.statistics import verdict_bounds

    rng = np.random.default_rng(5)
    for _ in range(300):
        layers = int(rng.integers(3, 12))
        mismatched = rng.uniform(-0.1, 0.5) + rng.uniform(0.001, 0.2) * rng.standard_normal(layers * 2)
        matched = rng.uniform(-0.1, 1.0) + 0.01 * rng.standard_normal(layers)
        t = cross_layer_test(matched, mismatched)
        b = verdict_bounds(t.null_mean, t.null_std)
        assert b.independent_below < b.derived_above
        margin = 1e-9 * max(1.0, abs(t.statistic))
        if t.statistic > b.derived_above + margin:
            assert t.verdict == "derived"
        elif t.statistic < b.independent_below - margin:
            assert t.verdict == "independent"
        elif b.independent_below + margin < t.statistic < b.derived_above - margin:
            assert t.verdict == "inconclusive"
