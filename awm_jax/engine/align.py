"""A pair's hidden-dimension alignment (docs/method.md steps 1-5).

Shared vocabulary -> base and target -> embedding-column cosine over the shared rows -> linear
assignment on the host (and the Procrustes rotation for ``orthogonal``) -> :class:`PairAlignment`,
which aligns any stack of base Grams. ``auto`` starts from the signed permutation and is decided by
:func:`settle_auto` once the layers are scored under it (``numerics.auto_alignment``: the rotation
is fitted only when its screen passes).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from awm_jax.engine.models import PreparedModel, check_embedding_sums, read_embedding
from awm_jax.numerics.alignment import (
    EmbeddingCross,
    assign_dimensions,
    check_alignment_evidence,
    embedding_cross,
    orthogonal_procrustes,
    permutation_fit,
)
from awm_jax.numerics.auto_alignment import auto_alignment, probe_pairs, probe_score, token_similarity
from awm_jax.numerics.kernels import align_grams, rotate_grams
from awm_jax.errors import UsageError
from awm_jax.io.vocab import shared_rows

__all__ = ["AutoPending", "PairAlignment", "align_pair", "settle_auto"]


@dataclasses.dataclass(frozen=True)
class PairAlignment:
    """How a pair's base dimensions map onto its target's.

    Attributes:
      base_is_a: whether model A is the base (the wider model; ties: A).
      perm: ``[n_t]`` int32 base dimension of each target dimension (the signed permutation).
      signs: ``[n_t]`` float32 +1/-1.
      rotation: ``[n_b, n_t]`` float32 orthonormal columns when the rotation is used, else ``None``.
      base_dims: ``n_b``; ``matched_dims`` is ``n_t``.
      diagnostics: the report's alignment numbers (fits, sign flips, mode used and why).
      vocabulary: shared-token counts, by model A and B.
      pending: for ``auto``, what :func:`settle_auto` needs once the layers are scored under the
        signed permutation (``None`` once decided, and for the other modes).
    """

    base_is_a: bool
    perm: np.ndarray
    signs: np.ndarray
    rotation: np.ndarray | None
    base_dims: int
    diagnostics: dict
    vocabulary: dict
    pending: "AutoPending | None" = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def matched_dims(self) -> int:
        return int(self.perm.size)

    def gather(self) -> tuple[jax.Array | None, jax.Array | None]:
        """``(perm, signs)`` as device arrays, for the kernels that align base Grams as they read
        them (``kernels.aligned_cka``); ``(None, None)`` when the base Grams need no alignment."""
        return jnp.asarray(self.perm), jnp.asarray(self.signs)

    def apply(self, grams: jax.Array) -> jax.Array:
        """``[L, n_b, n_b]`` base Grams -> ``[L, n_t, n_t]`` aligned Grams (on ``grams``' device)."""
        if self.rotation is not None:
            return rotate_grams(grams, jnp.asarray(self.rotation))
        return align_grams(grams, jnp.asarray(self.perm), jnp.asarray(self.signs))


@dataclasses.dataclass(frozen=True)
class AutoPending:
    """What ``auto`` decides on after the permutation's layer scores (:func:`settle_auto`): the
    embedding sums (for the rotation), and the embeddings and shared rows (for the token similarity)."""

    cross: EmbeddingCross
    emb_base: np.ndarray
    emb_target: np.ndarray
    ids_base: np.ndarray
    ids_target: np.ndarray


def align_pair(a: PreparedModel, b: PreparedModel, alignment: str, timings: dict | None = None) -> PairAlignment:
    """Aligns the pair's hidden dimensions (run under ``jax.default_device``).

    Args:
      a: model A.
      b: model B.
      alignment: ``"assignment"``, ``"orthogonal"`` or ``"auto"`` (``awm_jax.options``).
      timings: when given, receives ``embedding_read_s``, ``embedding_cosine_s``,
        ``assignment_s`` (and ``procrustes_s`` or ``auto_s``).

    Raises:
      AWMError: no shared tokens, a damaged embedding, a degenerate alignment.
    """
    timings = {} if timings is None else timings
    if a.grams.norm_gains != b.grams.norm_gains:
        raise UsageError(f"the models were prepared with different norm-gain modes ({a.grams.norm_gains}, "
                         f"{b.grams.norm_gains}); prepare both with the same mode")
    base_is_a = a.hidden_size >= b.hidden_size
    base, target = (a, b) if base_is_a else (b, a)
    t = time.perf_counter()
    shared = shared_rows(base.vocab, target.vocab, base.resolved.vocab_rows, target.resolved.vocab_rows)
    emb_base, emb_target = read_embedding(base.resolved), read_embedding(target.resolved)
    timings["embedding_read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cross = embedding_cross(emb_base, emb_target, shared.ids_a, shared.ids_b)
    check_embedding_sums(base.resolved, cross.sq_base)
    check_embedding_sums(target.resolved, cross.sq_target)
    check_alignment_evidence(cross, base.path, target.path)
    timings["embedding_cosine_s"] = time.perf_counter() - t
    t = time.perf_counter()
    assignment = assign_dimensions(cross.cosine())
    timings["assignment_s"] = time.perf_counter() - t
    diagnostics = assignment.diagnostics()
    rotation = None
    used, reason = "assignment", "requested assignment"
    if alignment == "orthogonal":
        t = time.perf_counter()
        fitted = orthogonal_procrustes(cross)
        timings["procrustes_s"] = time.perf_counter() - t
        rotation, used, reason = fitted.matrix, "orthogonal", "requested orthogonal"
        diagnostics.update(permutation_fit=permutation_fit(cross, assignment), rotation_fit=fitted.fit)
    pending = None
    if alignment == "auto":  # the permutation now; settle_auto decides once its layers are scored
        used, reason = "assignment", "auto: to be decided on the layers"
        pending = AutoPending(cross, emb_base, emb_target, shared.ids_a, shared.ids_b)
        diagnostics.update(permutation_fit=permutation_fit(cross, assignment))
    del emb_base, emb_target  # kept by ``pending`` for auto
    diagnostics.update(mode=alignment, used=used, reason=reason, norm_gains=a.grams.norm_gains)
    dropped_a, dropped_b = (shared.dropped_a, shared.dropped_b) if base_is_a else (shared.dropped_b, shared.dropped_a)
    vocabulary = {"shared_tokens": shared.shared_tokens, "shared_rows": len(shared), "dropped_a": dropped_a,
                  "dropped_b": dropped_b, "vocab_a": len(a.vocab), "vocab_b": len(b.vocab)}
    return PairAlignment(base_is_a, assignment.perm, assignment.signs, rotation, assignment.base_dims, diagnostics,
                         vocabulary, pending)


def settle_auto(align: PairAlignment, base: PreparedModel, target: PreparedModel, grid_q: np.ndarray,
                grid_k: np.ndarray, timings: dict | None = None) -> PairAlignment:
    """``auto``'s decision (``numerics.auto_alignment``) for an alignment ``align_pair`` left pending.

    The permutation's probe is read from the layer scores already computed under it
    (``grid_q``/``grid_k``, ``[L_base, L_target]``, filled at least at the probed pairs: the
    diagonal at equal depth), so a pair the screen keeps on the permutation costs nothing more;
    only a pair that may be a rotated copy has its rotation fitted and probed.

    Returns:
      ``align`` decided: the same signed permutation, or the rotation (then the layers must be
      scored again under it).
    """
    timings = {} if timings is None else timings
    pending = align.pending
    t = time.perf_counter()
    pairs = probe_pairs(base.grams.num_layers, target.grams.num_layers)
    rows, cols = [i for i, _ in pairs], [j for _, j in pairs]
    permutation = float(np.mean(np.concatenate([grid_q[rows, cols], grid_k[rows, cols]])))
    fitted = []

    def rotated() -> float:  # only for pairs the screen passes: the SVD is the cost
        fitted.append(orthogonal_procrustes(pending.cross))
        matrix = jnp.asarray(fitted[0].matrix)
        return probe_score(base.grams.take(rows), target.grams.take(cols), lambda g: rotate_grams(g, matrix))

    used, reason, probe = auto_alignment(
        pairs, align.matched_dims, permutation,
        lambda: token_similarity(pending.emb_base, pending.emb_target, pending.ids_base, pending.ids_target), rotated)
    timings["auto_s"] = time.perf_counter() - t
    diagnostics = dict(align.diagnostics, used=used, reason=reason, **probe.diagnostics())
    if fitted:
        diagnostics["rotation_fit"] = fitted[0].fit
    rotation = fitted[0].matrix if used == "orthogonal" else None
    return dataclasses.replace(align, rotation=rotation, diagnostics=diagnostics, pending=None)
