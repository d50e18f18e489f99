"""A pair's layer scores (docs/method.md steps 6-7): aligned unbiased CKA of every
paired layer, the mismatched layers of the calibrated null, and the layer pairing.

Grams come from the two fingerprints a chunk of layers at a time (one read ahead of the
kernels): the base's whole, to be aligned, the target's in upper form (``kernels.HsicParts``:
unpacked with no transposition), with its HSIC parts as the fingerprint stores them
(``GramSet.upper_parts``). The kernels are jitted and vmapped over a chunk, whose shape is
fixed per model, so one compilation serves every chunk of a pair and every pair of the same widths.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import numpy as np

from awm_jax.engine.align import PairAlignment
from awm_jax.fingerprint import GramSet, chunk_layers_for
from awm_jax.numerics.kernels import (HsicParts, aligned_cka, default_platform, grid_cka, hsic_parts_layers,
                                     paired_cka, paired_cka_from_parts)
from awm_jax.numerics.layer_match import match_layers
from awm_jax.numerics.statistics import CalibratedTest, cross_layer_test, matching_null_test

__all__ = ["LayerGrids", "LayerPairing", "MatchedScores", "mismatch_shifts", "score_equal_depth", "score_grid", "score_layers",
           "score_paired"]


def mismatch_shifts(layers: int) -> tuple[int, ...]:
    """Layer offsets whose pairs (``i``, ``i + s mod L``) sample the mismatched layers for the
    cross-layer null: all of them up to 8 layers; two (neighbours and half the depth away) up to
    16; beyond, half the depth away only (``L`` mismatched pairs are plenty, and each offset costs
    one more read of the target's Grams)."""
    if layers <= 8:
        return tuple(range(1, layers))
    if layers <= 16:
        return (1, layers // 2)
    return (layers // 2,)


def prefetched(read, args: list[tuple]):
    """``read(*a)`` for each ``a`` of ``args``, in order, each read started while the previous
    result is being used (file reads release the GIL): one read ahead, so memory stays bounded."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-grams") as reader:
        pending = reader.submit(read, *args[0]) if args else None
        for i in range(len(args)):
            result = pending.result()
            if i + 1 < len(args):
                pending = reader.submit(read, *args[i + 1])
            yield result
            del result


@dataclasses.dataclass(frozen=True)
class MatchedScores:
    """Scores of an equal-depth pair.

    Attributes:
      wq: ``[L]`` Q scores of the matched layers.
      wk: ``[L]`` K scores.
      mismatched: offset ``s`` -> ``[L]`` mean (Q+K)/2 scores of layer ``i`` against ``i + s mod L``.
    """

    wq: np.ndarray
    wk: np.ndarray
    mismatched: dict[int, np.ndarray]


def score_equal_depth(gb: GramSet, gt: GramSet, align: PairAlignment) -> MatchedScores:
    """Matched-layer Q and K scores, plus the mean (Q+K)/2 scores of the shifted (mismatched) pairs.

    Layers are scored in groups closed under the shifts (:func:`shift_groups`): each group's
    base and target layers are read once, with the target's stored HSIC parts, and every pairing
    (matched and shifted) scored on views of the same buffers. Layers that no small closed group
    holds (an odd depth beyond 16 layers, or shifts that need every layer on a wide model) are
    scored a chunk at a time, the target read again for each shift.
    """
    layers = gb.num_layers
    shifts = mismatch_shifts(layers)
    groups = shift_groups(layers, shifts, chunk_layers_for(gb.n, gb.n, layers))
    if groups is not None:
        return _score_groups(gb, gt, align, shifts, groups)
    chunk = chunk_layers_for(gb.n, gb.n, layers)
    wq, wk = np.empty(layers), np.empty(layers)
    off = {s: np.empty(layers) for s in shifts}
    starts = range(0, layers, chunk)
    reads = [(g, [(i + shift) % layers for i in range(start, min(start + chunk, layers))])
             for start in starts for g, shift in ((gb, 0), *((gt, s) for s in (0, *shifts)))]
    grams = prefetched(lambda g, ls: g.padded(ls, chunk, upper=g is not gb), reads)
    for start in starts:
        stop = min(start + chunk, layers)
        base = [jax.device_put(x) for x in next(grams)]
        for shift in (0, *shifts):
            where, read = [(i + shift) % layers for i in range(start, stop)], next(grams)
            sq, sk = (_pairings(align, base[j], jax.device_put(read[j]),
                                _padded(gt.upper_parts(j, where, read[j]), chunk), (0,))[: stop - start, 0]
                      for j in range(2))
            if shift == 0:
                wq[start:stop], wk[start:stop] = sq, sk
            else:
                off[shift][start:stop] = (sq + sk) / 2
    return MatchedScores(wq, wk, off)


def _padded(parts: HsicParts, size: int) -> HsicParts:
    """Parts of the layers of a chunk, the last repeated up to ``size`` for the zero layers that
    pad the chunk (their scores are dropped)."""
    return jax.tree_util.tree_map(lambda x: np.pad(x, [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1), mode="edge"),
                                  parts)


def shift_groups(layers: int, shifts: tuple[int, ...], chunk: int) -> tuple[tuple[int, ...], ...] | None:
    """Groups of layers closed under the shifts, each scored in one step (``None``: none that fit).

    * every layer at once when a chunk holds them all (small models, sketches);
    * for the one shift ``L / 2`` of an even depth beyond 16 layers: ``h`` consecutive layers
      and the ``h`` layers half the depth away (``i -> i + L/2`` maps the group onto itself),
      ``h`` the largest divisor of ``L / 2`` with ``2 h`` at most the chunk (at least a pair of
      layers, even where a chunk holds one): every group has the same shape, so the kernels
      compile once, and the next group is read while this one is scored.

    Within a group of ``g`` layers, the shift ``s`` pairs position ``j`` with ``j + s mod g``
    when the group is every layer, and with ``j + g/2 mod g`` in a half-turn group.
    """
    if chunk >= layers:
        return (tuple(range(layers)),)
    if shifts == (layers // 2,) and layers % 2 == 0:
        half = layers // 2
        h = max(d for d in range(1, max(1, chunk // 2) + 1) if half % d == 0)
        return tuple(tuple(range(k, k + h)) + tuple(range(k + half, k + h + half)) for k in range(0, half, h))
    return None


def _group_layers(g: GramSet, group: tuple[int, ...], index: int, upper: bool, buffers: dict,
                  slot: int) -> np.ndarray:
    """A group's Grams of one file of the kind (``index``) in an aligned buffer (``upper``: in
    upper form); an in-memory set's own array when the group is all of it and it is wanted whole.
    ``buffers`` keeps the arrays read into for each ``(upper, slot)`` and reuses them: with two
    slots used in turn, a read goes into the buffer of the read before last, whose scores are done."""
    if g.folder is None and group == tuple(range(g.num_layers)) and not upper:
        return g.arrays[index]
    array = buffers[upper, slot] = g.take_one(index, list(group), upper, buffers.get((upper, slot)))
    return array


def _span(x: jax.Array, start: int, stop: int) -> jax.Array:
    """Layers ``[start, stop)`` of a stack; on the CPU a view of the same buffer (no copy)."""
    return jax.device_put(np.asarray(x)[start:stop]) if default_platform() == "cpu" else x[start:stop]


def _shifted_cka(base, bparts, target, tparts, shift: int) -> np.ndarray:
    """``[g]`` scores of (rotated) base position ``j`` against target position ``j + shift mod g``:
    the positions that do not wrap round, then those that do."""
    size = base.shape[0]
    spans = ((0, size - shift, shift, size), (size - shift, size, 0, shift)) if shift else ((0, size, 0, size),)
    cut = lambda parts, a, b: jax.tree_util.tree_map(lambda x: x[a:b], parts)  # noqa: E731
    return np.concatenate([np.asarray(paired_cka_from_parts(_span(base, b0, b1), cut(bparts, b0, b1),
                                                            _span(target, t0, t1), cut(tparts, t0, t1), True))
                           for b0, b1, t0, t1 in spans])


def _pairings(align: PairAlignment, base: jax.Array, target: jax.Array, tparts, shifts: tuple[int, ...]) -> np.ndarray:
    """``[g, len(shifts)]`` scores of base position ``j``, aligned, against target position
    ``j + s mod g`` for each shift ``s``.

    Args:
      align: the pair's alignment.
      base: ``[g, n_b, n_b]`` whole base Grams.
      target: ``[g, n_t, n_t]`` target Grams in upper form; ``tparts`` their parts.
      shifts: the offsets.
    """
    if align.rotation is None:  # one fused pass per base Gram for every pairing (kernels.aligned_cka)
        return np.asarray(aligned_cka(base, *align.gather(), target, tparts, shifts))
    rotated = align.apply(base)
    rparts = hsic_parts_layers(rotated)
    return np.stack([_shifted_cka(rotated, rparts, target, tparts, s) for s in shifts], axis=1)


def _score_groups(gb: GramSet, gt: GramSet, align: PairAlignment, shifts: tuple[int, ...],
                  groups: tuple[tuple[int, ...], ...]) -> MatchedScores:
    """:func:`score_equal_depth` over groups closed under the shifts (:func:`shift_groups`), one
    group and one file of the kind (Q, then K) at a time, the next read while this one is scored; the
    same computation whether the Grams come from memory or from the cache."""
    layers = gb.num_layers
    wq, wk = np.empty(layers), np.empty(layers)
    shifted = {s: np.empty((2, layers)) for s in shifts}  # Q and K scores of the mismatched pairs
    steps = [(group, j) for group in groups for j in range(2)]  # one file at a time: half the buffer memory
    buffers: dict = {}
    grams = prefetched(_group_layers, [(g, group, j, g is not gb, buffers, i % 2) for i, (group, j) in enumerate(steps)
                                       for g in (gb, gt)])
    for group, j in steps:
        where = list(group)
        base, read = jax.device_put(next(grams)), next(grams)
        inner = tuple(s if len(group) == layers else len(group) // 2 for s in shifts)  # the shifts within the group
        parts = gt.upper_parts(j, where, read)  # stored with a cached fingerprint; else from the host copy
        scores = _pairings(align, base, jax.device_put(read), parts, (0, *inner))
        (wq, wk)[j][where] = scores[:, 0]
        for i, s in enumerate(shifts, 1):
            shifted[s][j, where] = scores[:, i]
    return MatchedScores(wq, wk, {s: (m[0] + m[1]) / 2 for s, m in shifted.items()})


def score_paired(gb: GramSet, gt: GramSet, align: PairAlignment, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Scores of the given (base layer, target layer) pairs for a one-array fingerprint kind (the MLP inputs)."""
    chunk = chunk_layers_for(gb.n, gb.n, len(pairs))
    out = np.empty(len(pairs))
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        (kb,) = gb.padded([b for b, _ in part], chunk)
        (kt,) = gt.padded([t for _, t in part], chunk, upper=True)
        scores = paired_cka(align.apply(jax.device_put(kb)), jax.device_put(kt), True)
        out[start : start + len(part)] = np.asarray(scores)[: len(part)]
    return out


class LayerGrids(NamedTuple):
    """Every base layer against every target layer: ``[L_b, L_t]`` Q scores and K scores."""

    q: np.ndarray
    k: np.ndarray


def score_grid(gb: GramSet, gt: GramSet, align: PairAlignment) -> LayerGrids:
    """Every aligned base layer against every target layer (different depths): the ``[L_b, L_t]``
    Q and K score grids, a chunk of base layers against a chunk of target layers at a time."""
    cb = chunk_layers_for(gb.n, gb.n, gb.num_layers)
    ct = chunk_layers_for(gt.n, gt.n, gt.num_layers)
    grid_q = np.empty((gb.num_layers, gt.num_layers))
    grid_k = np.empty_like(grid_q)
    for b0 in range(0, gb.num_layers, cb):
        b1 = min(b0 + cb, gb.num_layers)
        qb, kb = (align.apply(jax.device_put(x)) for x in gb.padded(list(range(b0, b1)), cb))
        for t0 in range(0, gt.num_layers, ct):
            t1 = min(t0 + ct, gt.num_layers)
            qt, kt = (jax.device_put(x) for x in gt.padded(list(range(t0, t1)), ct, upper=True))
            grid_q[b0:b1, t0:t1] = np.asarray(grid_cka(qb, qt, True))[: b1 - b0, : t1 - t0]
            grid_k[b0:b1, t0:t1] = np.asarray(grid_cka(kb, kt, True))[: b1 - b0, : t1 - t0]
    return LayerGrids(grid_q, grid_k)


@dataclasses.dataclass(frozen=True)
class LayerPairing:
    """A pair's layer scores and their pairing.

    Attributes:
      pairs: the paired ``(base layer, target layer)``.
      mode: ``"equal-depth"`` or the ``layer_match`` mode used.
      grid_q: ``[L_base, L_target]`` Q scores (only the diagonal is filled at equal depth).
      grid_k: ``[L_base, L_target]`` K scores.
      calibrated: the calibrated test of the paired layers against the mismatched ones.
      mlp: ``[len(pairs)]`` MLP-input scores of the paired layers, when asked for.
    """

    pairs: list[tuple[int, int]]
    mode: str
    grid_q: np.ndarray
    grid_k: np.ndarray
    calibrated: CalibratedTest
    mlp: np.ndarray | None = None


def layer_pairing(layer_match: str, *, matched: MatchedScores | None = None,
                  grids: LayerGrids | None = None) -> LayerPairing:
    """The paired layers, pairing mode, score grids and calibrated test of a pair: from the
    matched and mismatched scores at equal depth, or from the full layer grids otherwise."""
    if matched is not None:
        mismatched = np.concatenate(list(matched.mismatched.values())) if matched.mismatched else np.empty(0)
        return LayerPairing([(i, i) for i in range(len(matched.wq))], "equal-depth", np.diag(matched.wq),
                            np.diag(matched.wk), cross_layer_test((matched.wq + matched.wk) / 2, mismatched))
    grid_q, grid_k = grids.q, grids.k
    pairs = match_layers((grid_q + grid_k) / 2, layer_match)
    return LayerPairing(pairs, layer_match, grid_q, grid_k, matching_null_test((grid_q + grid_k) / 2, pairs, layer_match))


def score_layers(base, target, align: PairAlignment, layer_match: str, mlp: bool) -> LayerPairing:
    """Every score of a pair: matched layers and the calibrated null (equal depth), or the full
    layer grid and its pairing (different depths); the MLP inputs of the paired layers when ``mlp``.

    Args:
      base: the base :class:`~awm_jax.engine.models.PreparedModel` (``align``'s base).
      target: the target model.
      align: the pair's alignment.
      layer_match: pairing for different depths.
      mlp: also score the MLP inputs (both models must carry ``mlp_grams``).
    """
    gb, gt = base.grams, target.grams
    if gb.num_layers == gt.num_layers:
        pairing = layer_pairing(layer_match, matched=score_equal_depth(gb, gt, align))
    else:
        pairing = layer_pairing(layer_match, grids=score_grid(gb, gt, align))
    if mlp and base.mlp_grams is not None and target.mlp_grams is not None:
        pairing = dataclasses.replace(pairing, mlp=score_paired(base.mlp_grams, target.mlp_grams, align, pairing.pairs))
    return pairing
