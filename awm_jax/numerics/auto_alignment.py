"""How ``auto`` (the default alignment) chooses between the signed permutation and a rotation.

A dense rotation of the residual basis (function-preserving once the norm gains are folded)
defeats any permutation; the Procrustes rotation undoes it. ``auto`` keeps the paper's signed
permutation unless the rotation makes a few of the pair's layers agree as a derived pair's do
and the permutation does not (:func:`choose_alignment`). The embedding fits alone cannot decide:
on a real model's embedding (a few dominant columns and a shared mean direction) a signed
permutation fits a rotated copy's embedding half as well as the rotation does.

The rotation costs an SVD of the ``n x n`` embedding cross product (17.5 s at ``n = 4096`` on two
cores), so it is computed only when two cheap necessary conditions of a rotated copy hold
(:func:`rotation_screen`); otherwise the permutation is kept and the report says why:

* the permutation already makes the probed layers agree with mean CKA above
  ``AUTO_MAX_PERMUTATION_SHARE``: the rotation's CKA is at most 1 (unbiased CKA is a cosine of
  U-centred Grams), so the rule cannot prefer it whatever it scores. Every derived pair that is not
  rotated ends here;
* the two embeddings' token similarity structures differ (:func:`token_similarity`, the unbiased
  CKA of the token Grams ``E E^T`` over sampled shared rows, below ``AUTO_MIN_TOKEN_SIMILARITY``):
  it is invariant to any orthogonal map of either residual basis, so a rotated copy keeps its
  parent's value (1 for a plain rotation); most independent pairs end here.

Measured on the deep lineage zoo (docs/lineage-deep.md): rotated derivatives, including a
width-pruned base against a fine-tuned rotated copy, have token similarity 0.875 to 1.000;
independent pairs 0.128 to 0.569 (the highest: bases trained alike on the same data). On the
small real models of the wild set, independent pairs reach 0.974 and go on to the rotation
probe, which keeps their permutation: the screen saves time, the probe decides.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from typing import Callable

import jax.numpy as jnp
import numpy as np

from awm_jax.numerics.kernels import MIN_SAMPLES, paired_cka

__all__ = [
    "AUTO_MAX_PERMUTATION_SHARE",
    "AUTO_MIN_GAIN",
    "AUTO_MIN_ROTATION_CKA",
    "AUTO_MIN_TOKEN_SIMILARITY",
    "AUTO_NOISE_WIDTHS",
    "AUTO_PROBE_LAYERS",
    "AUTO_TOKEN_SAMPLE",
    "AlignmentProbe",
    "TokenGrams",
    "auto_alignment",
    "choose_alignment",
    "probe_margin",
    "probe_pairs",
    "probe_score",
    "rotation_screen",
    "token_sample_size",
    "token_similarity",
]

#: Layer pairs ``auto`` scores under both alignments (evenly spaced over the depth).
AUTO_PROBE_LAYERS = 4
#: ``auto`` takes the rotation only when all three hold for the probed layers' mean CKA:
#:
#: * the rotation makes them agree like a derived pair's do: at least ``AUTO_MIN_ROTATION_CKA``.
#:   A rotation has far more freedom than a signed permutation and, on real models' anisotropic
#:   weights, raises unrelated pairs' CKA too (small real models of ../shared/wild: independent
#:   pairs probe up to 0.18 rotated against 0.14 permuted, one pair of 105/361-token models 0.53
#:   against 0.40), but not to a derived pair's level;
#: * the permutation explains at most ``AUTO_MAX_PERMUTATION_SHARE`` of it (a rotated copy probes
#:   near 0 permuted; an unrelated pair's two probes are of one size);
#: * the difference exceeds the probe's noise, ``max(AUTO_MIN_GAIN, AUTO_NOISE_WIDTHS / n_t)``: an
#:   unrelated pair's difference spreads as about ``1 / n_t`` (random anisotropic models: standard
#:   deviation 0.020 at ``n_t = 48``, 0.007 at 128), so this is 4 standard deviations or more.
AUTO_MIN_ROTATION_CKA = 0.3
AUTO_MAX_PERMUTATION_SHARE = 0.5
AUTO_MIN_GAIN = 0.05
AUTO_NOISE_WIDTHS = 4.0
#: The rotation is tried only for pairs whose token similarity reaches this (module docstring).
AUTO_MIN_TOKEN_SIMILARITY = 0.7
#: Shared rows sampled for :func:`token_similarity` (a fixed seed: the same rows every run).
AUTO_TOKEN_SAMPLE = 2048


@dataclasses.dataclass(frozen=True)
class AlignmentProbe:
    """The evidence ``auto`` decided on.

    Attributes:
      pairs: the probed ``(base layer, target layer)`` pairs, at the same relative depth.
      permutation: mean unbiased CKA of the probed Q and K Grams aligned by the signed permutation.
      rotation: the same aligned by the orthogonal (Procrustes) map; ``None`` when the screen kept
        the permutation without computing the rotation.
      margin: how much higher ``rotation`` must be than ``permutation`` for ``auto`` to take it.
      token_similarity: :func:`token_similarity` of the embeddings (``None`` when not needed).
    """

    pairs: tuple[tuple[int, int], ...]
    permutation: float
    rotation: float | None = None
    margin: float = AUTO_MIN_GAIN
    token_similarity: float | None = None

    def diagnostics(self) -> dict:
        """The report's numbers (``None`` for what was not computed)."""
        return {"probe_layers": [list(p) for p in self.pairs], "probe_permutation": self.permutation,
                "probe_rotation": self.rotation, "probe_margin": self.margin,
                "token_similarity": self.token_similarity}


def probe_pairs(base_layers: int, target_layers: int, count: int = AUTO_PROBE_LAYERS) -> tuple[tuple[int, int], ...]:
    """Up to ``count`` layer pairs evenly spaced over the depth, base and target at the same
    relative depth (layer ``i`` with layer ``i`` at equal depth), first and last layers included."""
    k = max(1, min(count, base_layers, target_layers))
    if k == 1:
        return ((0, 0),)
    steps = [j / (k - 1) for j in range(k)]
    return tuple(dict.fromkeys((round(f * (base_layers - 1)), round(f * (target_layers - 1))) for f in steps))


def probe_margin(target_dims: int) -> float:
    """The probe's noise margin at ``n_t`` target dimensions (see ``AUTO_MIN_GAIN``)."""
    return max(AUTO_MIN_GAIN, AUTO_NOISE_WIDTHS / target_dims)


def probe_score(base: tuple[np.ndarray, ...], target: tuple[np.ndarray, ...], aligned) -> float:
    """Mean unbiased CKA of probed ``base`` Q and K Gram stacks, aligned by ``aligned``, against
    the ``target`` ones (the measure :class:`AlignmentProbe` reports)."""
    scores = [np.asarray(paired_cka(aligned(jnp.asarray(b)), jnp.asarray(t))) for b, t in zip(base, target)]
    return float(np.mean(np.concatenate(scores)))


def _centred_unit(rows: np.ndarray) -> np.ndarray:
    """``rows`` minus their mean row, scaled to unit Frobenius norm (float64 on the host, then
    float32: the measure is scale free, and no magnitude overflows)."""
    x = np.asarray(rows, np.float64)
    x -= x.mean(axis=0)
    norm = np.linalg.norm(x)
    return (x / norm if norm > 0 else x).astype(np.float32)


def token_sample_size(rows: int, sample: int = AUTO_TOKEN_SAMPLE) -> int:
    """Rows :func:`token_similarity` samples: the largest power of two up to ``min(rows, sample)``
    (a handful of shapes, so the CKA kernel compiles a handful of times per process)."""
    return 1 << (min(rows, sample).bit_length() - 1) if rows > 0 else 0


def _token_gram(emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``A A^T`` of the centred, unit-norm rows ``A`` of ``emb`` (:func:`token_similarity`)."""
    a = _centred_unit(emb[rows])
    return a @ a.T


class TokenGrams:
    """Token Grams already computed, by embedding and rows: a scan compares one model with many
    catalogue entries, mostly over the same shared rows, so its side is computed once. Keeps the
    ``size`` most recently used (each holds its embedding, so an id is never reused meanwhile)."""

    def __init__(self, size: int = 4):
        self._grams: collections.OrderedDict = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()  # a scan's workers share one

    def gram(self, emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
        key = (id(emb), hashlib.sha256(np.ascontiguousarray(rows, np.int64).tobytes()).digest())
        with self._lock:
            hit = self._grams.get(key)
            if hit is not None and hit[0] is emb:
                self._grams.move_to_end(key)
                return hit[1]
        gram = _token_gram(emb, rows)
        with self._lock:
            self._grams[key] = (emb, gram)
            while len(self._grams) > self._size:
                self._grams.popitem(last=False)
        return gram


def token_similarity(emb_base: np.ndarray, emb_target: np.ndarray, ids_base: np.ndarray, ids_target: np.ndarray,
                     sample: int = AUTO_TOKEN_SAMPLE, grams: TokenGrams | None = None) -> float:
    """Unbiased linear CKA of the two embeddings' token Grams over sampled shared rows.

    The Grams ``E E^T`` of :func:`token_sample_size` shared rows, drawn with a fixed seed (the same
    tokens on both sides), compared by the kernels' unbiased CKA: unchanged by any orthogonal map
    (rotation, signed permutation) of either residual basis and by scale, so 1 for a rotated copy,
    and near 0 for unrelated embeddings whatever their width (the plain RV coefficient is biased
    upwards when the rows are fewer than the dimensions: 0.67 for two random ``[32000, 4096]``
    embeddings). Cost: two ``[s, s]`` products over ``n`` columns (1.5 s at ``n = 4096``, ``s = 2048``).

    Args:
      emb_base: ``[V_b, n_b]`` base embedding.
      emb_target: ``[V_t, n_t]`` target embedding.
      ids_base: ``[T]`` base rows of the shared tokens.
      ids_target: ``[T]`` target rows of the same tokens.
      sample: rows sampled (at most).
      grams: Grams computed before, reused when the same embedding and rows come again.

    Returns:
      The CKA clipped to ``[0, 1]``; 1 (no evidence against a rotation) below ``MIN_SAMPLES`` rows.
    """
    count = token_sample_size(ids_base.size, sample)
    if count < MIN_SAMPLES:
        return 1.0
    pick = np.sort(np.random.default_rng(0).choice(ids_base.size, size=count, replace=False))
    gram = _token_gram if grams is None else grams.gram
    cka = paired_cka(jnp.asarray(gram(emb_base, ids_base[pick]))[None], jnp.asarray(gram(emb_target, ids_target[pick]))[None])
    return float(np.clip(np.asarray(cka)[0], 0.0, 1.0))


def rotation_screen(permutation: float, similarity: Callable[[], float]) -> tuple[str | None, float | None]:
    """Why ``auto`` keeps the permutation without computing the rotation (module docstring), or
    ``None`` when the rotation must be tried; with the token similarity when it was computed."""
    if permutation > AUTO_MAX_PERMUTATION_SHARE:
        return (f"the permutation makes the probed layers agree (mean CKA {permutation:.3f} > "
                f"{AUTO_MAX_PERMUTATION_SHARE}): no rotation could be preferred"), None
    value = similarity()
    if value < AUTO_MIN_TOKEN_SIMILARITY:
        return (f"the embeddings are not rotations of each other (token similarity {value:.3f} < "
                f"{AUTO_MIN_TOKEN_SIMILARITY})"), value
    return None, value


def choose_alignment(probe: AlignmentProbe) -> tuple[str, str]:
    """``auto``'s choice, ``"assignment"`` or ``"orthogonal"``, with the reason.

    The rotation is taken when it makes the probed layers' Grams agree like a derived pair's (mean
    CKA at least :data:`AUTO_MIN_ROTATION_CKA`), the permutation explains at most
    :data:`AUTO_MAX_PERMUTATION_SHARE` of that, and the difference exceeds the probe's noise margin.
    """
    layers = ", ".join(f"{b}->{t}" for b, t in probe.pairs)
    if probe.rotation is None:
        raise ValueError("choose_alignment needs the rotation's probe (auto_alignment screens first)")
    evidence = (f"probed layers {layers}: mean CKA {probe.rotation:.3f} rotated vs {probe.permutation:.3f} permuted, "
                f"margin {probe.margin:.3f}")
    if (probe.rotation >= AUTO_MIN_ROTATION_CKA and probe.permutation <= AUTO_MAX_PERMUTATION_SHARE * probe.rotation
            and probe.rotation - probe.permutation >= probe.margin):
        return "orthogonal", f"the residual basis looks rotated: {evidence}"
    return "assignment", (f"the paper's alignment: the rotation does not make the layers agree as a rotated copy's "
                          f"would ({evidence})")


def auto_alignment(pairs: tuple[tuple[int, int], ...], target_dims: int, permutation: float,
                   similarity: Callable[[], float], rotation: Callable[[], float]) -> tuple[str, str, AlignmentProbe]:
    """``auto``: screens, and only then computes the rotation and decides.

    Args:
      pairs: the probed layer pairs (:func:`probe_pairs`).
      target_dims: ``n_t`` (the probe's noise margin).
      permutation: the probed layers' mean CKA under the signed permutation (:func:`probe_score`).
      similarity: computes :func:`token_similarity` (called only when the permutation probe is low).
      rotation: fits the rotation and returns the probed layers' mean CKA under it (called only
        when the screen passes; the caller keeps the rotation it fitted).

    Returns:
      ``(used, reason, probe)``: ``used`` is ``"assignment"`` or ``"orthogonal"``.
    """
    probe = AlignmentProbe(pairs, permutation, margin=probe_margin(target_dims))
    kept, value = rotation_screen(permutation, similarity)
    probe = dataclasses.replace(probe, token_similarity=value)
    if kept is not None:
        return "assignment", f"the paper's alignment, rotation not tried: {kept}", probe
    probe = dataclasses.replace(probe, rotation=rotation())
    used, reason = choose_alignment(probe)
    return used, f"{reason}; token similarity {value:.3f}", probe
