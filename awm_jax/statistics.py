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

__all__ = [
    "REFERENCE_NULL_MEAN",
    "REFERENCE_NULL_STD",
    "DERIVED_Z",
    "INDEPENDENT_Z",
    "REFERENCE_MIN_HIDDEN",
    "z_reference",
    "verdict",
    "VERDICT_RULE",
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
