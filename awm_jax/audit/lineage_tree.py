"""Lineage families and the lineage tree of an audited set of models.

Families are the connected components of the graph whose edges are the *derived* pairs.
Derivation is transitive, so a derivative of a derivative joins its grandparent's family even
when that distant pair alone scores lower. Which pairs are edges (``FAMILY_RULES``):

* ``fwer`` (default): the calibrated cross-layer test rejects "no inheritance" at a
  *family-wise* error rate of ``CALIBRATED_ALPHA`` over the audit's ``m`` scored pairs
  (Bonferroni: p < alpha / m). Each pair's own verdict uses p < alpha; among the thousands of
  independent pairs of a large audit a few would pass that by chance and merge unrelated
  families. Pairs without a p-value (fewer than 3 matched layers) count when their verdict is
  ``derived`` (the published reference's, for models of hidden size 4096 and more).
* ``verdict``: the pairs whose verdict is ``derived`` (as ``compare`` reports it).
* a score threshold ``t``: the pairs whose mean score is at least ``t``.

The tree drawn is the *single-linkage* tree on the distance ``1 - score``
(:func:`lineage_linkage`). With a threshold, the families are exactly its flat cut at
``1 - t``, so picture and families agree by construction; otherwise families are coloured onto
its leaves.

Choosing ``t``: the reference verdict's bound comes from models of hidden size 4096-5120.
Narrower models score higher when independent (independent models of hidden size 32 reach
0.03-0.06), and models with fewer than 3 layers have no calibrated test, so for such models
pass a threshold between the independent and the derived scores the heatmap shows.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from awm_jax.numerics.statistics import CALIBRATED_ALPHA

__all__ = ["FAMILY_RULES", "HIGH_SCORE", "derived_edges", "describe_rule", "families", "leaf_order", "lineage_linkage",
           "why_not_joined"]

#: Named rules for the edges of the family graph (a float threshold is the third kind).
from awm_jax.options import FAMILY_RULES  # noqa: E402  (one definition of the choices)


def derived_edges(pairs: Sequence, rule: str | float) -> list[bool]:
    """Which scored pairs are edges of the family graph.

    Args:
      pairs: the audit's pairs (``PairScore``: ``mean``, ``verdict``, ``p_value``, ``error``).
      rule: ``"fwer"``, ``"verdict"``, or a mean-score threshold.

    Returns:
      One bool per pair (unscored pairs are never edges).
    """
    if not isinstance(rule, str):
        return [not p.error and p.mean >= rule for p in pairs]
    if rule == "verdict":
        return [p.verdict == "derived" for p in pairs]
    if rule != "fwer":
        raise ValueError(f"unknown family rule {rule!r}; choose one of {', '.join(FAMILY_RULES)} or a threshold")
    tested = max(1, sum(1 for p in pairs if not p.error))
    bound = CALIBRATED_ALPHA / tested
    return [not p.error and (p.p_value < bound if math.isfinite(p.p_value) else p.verdict == "derived") for p in pairs]


#: A mean score this high is far above every independent pair measured (the lineage zoo's highest
#: independent pair scores 0.28, the wild set's 0.37): when such a pair is not an edge of the family
#: graph, the summary says why.
HIGH_SCORE = 0.5


def why_not_joined(pair, rule: str | float, scored_pairs: int) -> str:
    """Why a scored pair is not an edge of the family graph under ``rule``, in one phrase (the
    summary prints it for pairs scoring at least :data:`HIGH_SCORE`, which the lineage tree draws
    close together)."""
    from awm_jax.numerics.statistics import CALIBRATED_MIN_EFFECT

    if not isinstance(rule, str):
        return f"mean {pair.mean:.4f} is below the family threshold {rule:g}"
    c = pair.calibrated
    if not math.isfinite(pair.p_value):
        return f"no calibrated p-value ({c.get('method', 'no null')}); verdict {pair.verdict}"
    if rule == "fwer" and pair.verdict == "derived":
        return (f"p {pair.p_value:.3g} is significant for this pair but not over the audit's {scored_pairs} pairs "
                f"(bound {CALIBRATED_ALPHA / max(1, scored_pairs):.2g})")
    effect = c["statistic"] - c["null_mean"]
    if pair.p_value < CALIBRATED_ALPHA and effect < CALIBRATED_MIN_EFFECT:
        return (f"matched layers exceed the mismatched ones by only {effect:.3f} (< {CALIBRATED_MIN_EFFECT:g}), as "
                "for models trained alike; verdict " + pair.verdict)
    return (f"p {pair.p_value:.3g} against its own mismatched layers ({c.get('method', '')}) is not below "
            f"{CALIBRATED_ALPHA:g}: the layers do not stand out from each other enough to call it; verdict {pair.verdict}")


def describe_rule(rule: str | float, scored_pairs: int) -> str:
    """One line saying which pairs joined families."""
    if not isinstance(rule, str):
        return f"connected components of the pairs with mean score >= {rule:g} (single-linkage cut of the tree)"
    if rule == "verdict":
        return "connected components of the pairs whose verdict is 'derived'"
    return (f"connected components of the pairs whose calibrated p < {CALIBRATED_ALPHA:g} / {scored_pairs} pairs "
            f"(family-wise error rate {CALIBRATED_ALPHA:g}); pairs without a p-value: verdict 'derived'")


def families(names: list[str], edges: list[tuple[int, int]]) -> tuple[tuple[str, ...], ...]:
    """Connected components of the models under the derivation edges.

    Args:
      names: model names (index = model number).
      edges: ``(i, j)`` model numbers of each derived pair.

    Returns:
      Families, each a tuple of names in input order; families ordered by their first member.
      Models with no derived partner form families of one.
    """
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(names)):
        groups.setdefault(root(i), []).append(i)
    return tuple(tuple(names[i] for i in members) for _, members in sorted(groups.items()))


def lineage_linkage(scores: np.ndarray) -> np.ndarray:
    """Single-linkage tree of a full, symmetric score matrix on the distance ``1 - score``.

    Args:
      scores: ``[n, n]`` mean scores (diagonal ignored; NaN, an unscored pair, counts as 0).

    Returns:
      The ``[n - 1, 4]`` scipy linkage matrix (``scipy.cluster.hierarchy``).
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    n = scores.shape[0]
    if n < 2:
        raise ValueError(f"a lineage tree needs at least 2 models, got {n}")
    dist = 1.0 - np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)
    dist = np.clip((dist + dist.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    return linkage(squareform(dist, checks=False), method="single")


def leaf_order(link: np.ndarray) -> list[int]:
    """Model numbers in the tree's leaf order (families end up contiguous)."""
    from scipy.cluster.hierarchy import leaves_list

    return [int(i) for i in leaves_list(link)]
