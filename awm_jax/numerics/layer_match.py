"""Layer pairing between models of different depth (docs/method.md step 7).

Equal depth pairs layer ``l`` with layer ``l``. Different depth works on the grid of mean
(Q + K) / 2 scores of every base layer against every target layer:

* ``assignment``: the paper's choice, a maximising linear assignment that ignores depth order;
* ``monotone``: an order-preserving matching (dynamic programming): every layer of the
  shallower model is matched to a distinct layer of the deeper one, in increasing depth order,
  maximising the total score.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["LAYER_MATCH_MODES", "match_layers", "monotone_matching"]

from awm_jax.options import LAYER_MATCH_MODES  # noqa: E402  (one definition of the choices)


def monotone_matching(grid: np.ndarray) -> list[tuple[int, int]]:
    """Order-preserving maximum-score matching of the shorter axis into the longer one.

    Args:
      grid: ``[a, b]`` scores.

    Returns:
      ``min(a, b)`` pairs ``(i, j)`` with both indices strictly increasing.
    """
    transpose = grid.shape[0] > grid.shape[1]
    g = grid.T if transpose else grid
    m, big = g.shape  # m <= big: every row gets a distinct column, in order
    dp = np.full((m + 1, big + 1), -np.inf)
    dp[0, :] = 0.0
    for i in range(1, m + 1):
        for j in range(i, big + 1):
            dp[i, j] = max(dp[i, j - 1], dp[i - 1, j - 1] + g[i - 1, j - 1])
    pairs, i, j = [], m, big
    while i > 0:
        if j > i and dp[i, j] == dp[i, j - 1]:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    pairs.reverse()
    return [(b, a) for a, b in pairs] if transpose else pairs


def match_layers(grid: np.ndarray, mode: str) -> list[tuple[int, int]]:
    """Pairs base layers (rows of ``grid``) with target layers (columns).

    Args:
      grid: ``[L_b, L_t]`` mean scores; for equal depth only the diagonal is used.
      mode: ``"assignment"`` or ``"monotone"``.

    Returns:
      ``(base_layer, target_layer)`` pairs sorted by base layer.
    """
    if mode not in LAYER_MATCH_MODES:
        raise ValueError(f"layer_match must be one of {LAYER_MATCH_MODES}, got {mode!r}")
    lb, lt = grid.shape
    if lb == lt:
        return [(i, i) for i in range(lb)]
    if mode == "assignment":
        rows, cols = linear_sum_assignment(grid, maximize=True)
        return sorted(zip(rows.tolist(), cols.tolist()))
    return monotone_matching(grid)
