"""Statistics and the verdict.

The paper's reference prints ``|S - 0.00375| / 0.0028``, the mean and standard deviation of
its 90 independent 7B/13B pairs. awm_jax reports the *signed* z-score against that published
reference (a clearly negative score is not evidence of derivation) and derives a verdict from it:

* ``derived``       if ``z >= 10``  (mean score >= 0.0318);
* ``independent``   if ``z <= 3``   (mean score <= 0.0121);
* ``inconclusive``  otherwise.

The weakest derived pair the paper reports (a pruned-and-distilled 1B model from an 8B one) has
z = 12.1, the strongest independent pair stays below 3. The reference was measured on models
with hidden sizes 4096-5120; unbiased CKA of independent models spreads wider at small hidden
sizes, so for narrower models the report adds a warning and the verdict should be read with it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from scipy import special

__all__ = [
    "REFERENCE_NULL_MEAN",
    "REFERENCE_NULL_STD",
    "DERIVED_Z",
    "INDEPENDENT_Z",
    "REFERENCE_MIN_HIDDEN",
    "z_reference",
    "verdict",
    "VERDICT_RULE",
    "CalibratedTest",
    "cross_layer_test",
    "matching_null_test",
    "CALIBRATED_ALPHA",
    "CALIBRATED_RULE",
    "CALIBRATED_MIN_EFFECT",
    "MISMATCHED_BAND",
    "VerdictBounds",
    "verdict_bounds",
    "Decision",
    "decide",
]

REFERENCE_NULL_MEAN = 0.00375
REFERENCE_NULL_STD = 0.0028
DERIVED_Z = 10.0
INDEPENDENT_Z = 3.0
#: Smallest hidden size among the models behind the published reference.
REFERENCE_MIN_HIDDEN = 4096
VERDICT_RULE = (
    f"z vs published reference (mean {REFERENCE_NULL_MEAN}, std {REFERENCE_NULL_STD}, 90 independent "
    f"7B/13B pairs): derived if z >= {DERIVED_Z:g}, independent if z <= {INDEPENDENT_Z:g}, else inconclusive"
)


def z_reference(score: float) -> float:
    """Signed z-score of a mean score against the published negative reference."""
    return (score - REFERENCE_NULL_MEAN) / REFERENCE_NULL_STD


def verdict(z: float) -> str:
    """``derived``, ``independent`` or ``inconclusive`` from the signed reference z-score."""
    if z >= DERIVED_Z:
        return "derived"
    if z <= INDEPENDENT_Z:
        return "independent"
    return "inconclusive"


# --- Calibrated statistics: the cross-layer null ------------------------------------------------
#
# Independently trained models can share structure without sharing weights (same data, same
# tokenizer): their aligned Q/K score well above the published reference, but equally well for
# *mismatched* layers (layer i of A against layer j != i of B), which inherit nothing from one
# another in either case. A derived model inherits each layer's weights, so its matched layers
# score far above its mismatched ones. The null "no weight inheritance" is therefore: the matched
# layers' scores are draws from the same distribution as the mismatched layers' scores. The
# statistic is the mean matched score; its null mean and deviation come from the mismatched
# scores of the same pair, so the null knows the pair's widths, depths and data.

#: Below this many matched layers no p-value is given (the null has too few layer pairs).
MIN_LAYERS_FOR_NULL = 3
#: ``derived`` when p is below this (the false-positive rate the verdict implies under the null).
CALIBRATED_ALPHA = 1e-3
#: ... and the matched layers exceed the mismatched ones by at least this much (effect size):
#: models trained alike (same architecture, data and data order, other seed) show small but
#: significant layer-position structure, about 0.05 in the lineage zoo, never an inherited layer.
CALIBRATED_MIN_EFFECT = 0.1
#: ``independent`` when p is above this; in between, ``inconclusive``.
CALIBRATED_INDEPENDENT_P = 0.05
CALIBRATED_RULE = (
    f"calibrated cross-layer null (matched vs mismatched layers of this pair): derived if p < {CALIBRATED_ALPHA:g} "
    f"(false-positive rate {CALIBRATED_ALPHA:g} under the null) and matched layers exceed mismatched ones by "
    f">= {CALIBRATED_MIN_EFFECT:g}, independent if p > {CALIBRATED_INDEPENDENT_P:g}, else inconclusive"
)
#: Monte Carlo draws for the null of a maximised (different-depth) layer matching.
MATCHING_NULL_DRAWS = 2000


@dataclasses.dataclass(frozen=True)
class CalibratedTest:
    """A p-value for "no weight inheritance" from the pair's own mismatched-layer scores.

    Attributes:
      statistic: mean score of the matched layers.
      null_mean: mean of the statistic under the null.
      null_std: its standard deviation under the null.
      z: ``(statistic - null_mean) / null_std``.
      p_value: one-sided normal tail of ``z`` (NaN when there are too few layers).
      verdict: ``derived`` / ``independent`` / ``inconclusive`` / ``undetermined``.
      method: how the null was obtained.
      mismatched_pairs: number of mismatched layer pairs behind the null.
      mismatched_mean: mean score of the mismatched layer pairs themselves (NaN when there are
        none); at equal depth it is ``null_mean``.
      mismatched_low: their 5th percentile: with ``mismatched_high`` (the 95th), the band where
        the layers that inherit nothing from one another score (the reports draw it).
      mismatched_high: their 95th percentile.
    """

    statistic: float
    null_mean: float
    null_std: float
    z: float
    p_value: float
    verdict: str
    method: str
    mismatched_pairs: int
    mismatched_mean: float = float("nan")
    mismatched_low: float = float("nan")
    mismatched_high: float = float("nan")

    def to_dict(self) -> dict:
        """Plain JSON: NaN (no p-value) becomes ``None``."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in dataclasses.asdict(self).items()}


#: Percentiles of the mismatched layer pairs' scores that bound the band the reports draw.
MISMATCHED_BAND = (5.0, 95.0)


def _band(mismatched: np.ndarray) -> dict[str, float]:
    """Mean and :data:`MISMATCHED_BAND` percentiles of the mismatched layer pairs' scores."""
    if mismatched.size == 0:
        return {}
    low, high = np.percentile(mismatched, MISMATCHED_BAND)
    return {"mismatched_mean": float(mismatched.mean()), "mismatched_low": float(low), "mismatched_high": float(high)}


def _finish(stat: float, mean: float, std: float, method: str, mismatched: np.ndarray) -> CalibratedTest:
    if not np.isfinite(std) or std <= 0:
        std = max(float(np.finfo(np.float32).eps), abs(stat - mean) * 1e-6)
    z = (stat - mean) / std
    p = float(special.ndtr(-z))
    if p < CALIBRATED_ALPHA and stat - mean >= CALIBRATED_MIN_EFFECT:
        verdict = "derived"
    elif p > CALIBRATED_INDEPENDENT_P:
        verdict = "independent"
    else:
        verdict = "inconclusive"
    return CalibratedTest(float(stat), float(mean), float(std), float(z), p, verdict, method, mismatched.size,
                          **_band(mismatched))


def _undetermined(stat: float, method: str, mismatched: np.ndarray) -> CalibratedTest:
    nan = float("nan")
    return CalibratedTest(float(stat), nan, nan, nan, nan, "undetermined", method, mismatched.size, **_band(mismatched))


def cross_layer_test(matched: np.ndarray, mismatched: np.ndarray) -> CalibratedTest:
    """Equal depth: matched scores against the mismatched ones (a two-sample z on the means).

    Args:
      matched: ``[L]`` scores of layer ``i`` against layer ``i``.
      mismatched: ``[M]`` scores of layer ``i`` against layers ``j != i`` (all or a sample).
    """
    matched, mismatched = np.asarray(matched, float), np.asarray(mismatched, float)
    method = f"cross-layer null: {matched.size} matched vs {mismatched.size} mismatched layer pairs"
    if matched.size < MIN_LAYERS_FOR_NULL or mismatched.size < 2:
        return _undetermined(matched.mean(), method + " (too few layers for a p-value)", mismatched)
    spread = mismatched.std(ddof=1)
    std = spread * np.sqrt(1.0 / matched.size + 1.0 / mismatched.size)
    return _finish(matched.mean(), mismatched.mean(), std, method, mismatched)


def matching_null_test(grid: np.ndarray, pairs: list[tuple[int, int]], mode: str, seed: int = 0) -> CalibratedTest:
    """Different depths: the matched mean against its Monte Carlo null under shuffled grid entries.

    The layer matching maximises over the grid, so a matched mean is inflated even without
    inheritance. Under the null every layer pair is exchangeable, so the null shuffles the grid's
    entries to random positions and repeats the same maximisation, ``MATCHING_NULL_DRAWS`` times
    (a permutation null; resampling only the unmatched entries would be biased low, since the
    maximisation has taken the largest).
    """
    from awm_jax.numerics.layer_match import match_layers

    grid = np.asarray(grid, float)
    stat = float(np.mean([grid[i, j] for i, j in pairs]))
    matched = np.zeros(grid.shape, bool)
    matched[tuple(np.array(pairs).T)] = True
    mismatched = grid[~matched]
    method = f"shuffled-grid null of the {mode} matching ({MATCHING_NULL_DRAWS} shuffles of {grid.size} layer pairs)"
    if len(pairs) < MIN_LAYERS_FOR_NULL or mismatched.size < 2:
        return _undetermined(stat, method + " (too few layers for a p-value)", mismatched)
    rng = np.random.default_rng(seed)
    draws = np.empty(MATCHING_NULL_DRAWS)
    for d in range(MATCHING_NULL_DRAWS):
        g = rng.permutation(grid.ravel()).reshape(grid.shape)
        draws[d] = np.mean([g[i, j] for i, j in match_layers(g, mode)])
    return _finish(stat, draws.mean(), draws.std(ddof=1), method, mismatched)


class VerdictBounds(NamedTuple):
    """Where the matched layers' mean score (the statistic) changes the calibrated verdict:
    ``derived`` above ``derived_above``, ``independent`` below ``independent_below``,
    ``inconclusive`` between (the same decisions as the p-value rule, as scores to draw)."""

    independent_below: float
    derived_above: float


def verdict_bounds(null_mean: float, null_std: float) -> VerdictBounds:
    """The scores of the statistic at which the calibrated verdict changes, for a test with this
    null (``CalibratedTest.null_mean`` and ``null_std``): p > ``CALIBRATED_INDEPENDENT_P`` below
    the first; p < ``CALIBRATED_ALPHA`` and an effect of at least ``CALIBRATED_MIN_EFFECT`` above
    the second."""
    independent = null_mean + float(special.ndtri(1.0 - CALIBRATED_INDEPENDENT_P)) * null_std
    derived = max(null_mean + float(special.ndtri(1.0 - CALIBRATED_ALPHA)) * null_std, null_mean + CALIBRATED_MIN_EFFECT)
    return VerdictBounds(independent, derived)


class Decision(NamedTuple):
    """A pair's verdict, the rule that gave it, and the caveats to print with it."""

    verdict: str
    rule: str
    warnings: list[str]


def decide(z: float, calibrated: CalibratedTest, narrowest_hidden: int) -> Decision:
    """The verdict of a pair, the rule that gave it, and the caveats to print with it.

    The calibrated test decides when it has a p-value; otherwise the published reference z
    decides for models as wide as those behind it, and narrower ones are ``inconclusive``.
    """
    warnings = []
    if narrowest_hidden < REFERENCE_MIN_HIDDEN:
        warnings.append(
            f"hidden size {narrowest_hidden} is below the {REFERENCE_MIN_HIDDEN}+ of the models behind the published "
            "reference; independent models of this width can score well above it, so the reference z-score "
            "overstates significance (the calibrated p-value does not rest on it)"
        )
    if calibrated.verdict != "undetermined":
        return Decision(calibrated.verdict, CALIBRATED_RULE, warnings)
    if narrowest_hidden >= REFERENCE_MIN_HIDDEN:
        warnings.append(f"no calibrated p-value: {calibrated.method}; the verdict uses the published reference")
        return Decision(verdict(z), VERDICT_RULE, warnings)
    rule = (f"no calibrated p-value ({calibrated.method}) and hidden size {narrowest_hidden} is below the "
            f"{REFERENCE_MIN_HIDDEN}+ the published reference holds for: inconclusive")
    return Decision("inconclusive", rule, warnings)
