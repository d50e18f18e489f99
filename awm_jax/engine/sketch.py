"""A full model scored against a compact sketch of another (docs/catalogue.md).

A :class:`Sketch` holds what AWM needs of a model without its weights: the embedding rows of a
fixed token subset (for the alignment) and every layer's Q and K Grams restricted to a retained
subset ``D`` of its residual dimensions (for the layer scores). :func:`score_against_sketch`
runs the engine's own steps on it, so a sketch's verdict follows the same calibrated rule as a
pair's:

1. shared tokens: the sketch's tokens present in the model's vocabulary (within its embedding);
2. alignment: the sketch's ``m = |D|`` retained embedding columns against the model's ``n``
   columns, over the shared rows; the base is the wider model, ties the scanned model, as in
   ``engine.compare(model, sketched model)`` (with ``m = n_sketch`` this is exactly the
   engine's alignment); a sketch wider than the model but keeping fewer dimensions than the
   model has is aligned the other way round (the model's dimensions onto ``D``);
3. the Grams in one space: sketch as base: ``K_sketch`` aligned onto the model's
   dimensions, as the engine aligns a base; model as base (``m < n``): the model's Grams
   (otherwise) gathered at the matched dimensions ``p(D)`` with their signs (``K_model[p(D), p(D)]``), or
   rotated (``R^T K_model R``, the whole cached Gram is known), compared with ``K_sketch``;
4. layer scores, pairing, calibrated test and verdict: ``engine.layers`` and ``engine.pair.assemble``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import numpy as np

from awm_jax.engine.align import PairAlignment
from awm_jax.engine.layers import layer_pairing, score_equal_depth, score_grid
from awm_jax.engine.models import PreparedModel, check_embedding_sums, read_embedding
from awm_jax.engine.pair import assemble
from awm_jax.errors import VocabularyError
from awm_jax.fingerprint import GramSet, chunk_layers_for
from awm_jax.numerics.alignment import (
    EmbeddingCross,
    assign_dimensions,
    check_alignment_evidence,
    embedding_cross,
    orthogonal_procrustes,
    permutation_fit,
)
from awm_jax.numerics.auto_alignment import TokenGrams, auto_alignment, probe_pairs, probe_score, token_similarity
from awm_jax.options import PairOptions
from awm_jax.report import PairResult

__all__ = ["ModelSide", "Sketch", "SketchRows", "score_against_sketch", "sketch_rows"]


@dataclasses.dataclass(frozen=True)
class Sketch:
    """What AWM needs of a model to score another against it, without its weights.

    Attributes:
      tokens: ``K`` token strings whose embedding rows are kept.
      embedding: ``[K, m]`` float32 embedding rows of ``tokens``, columns ``dims``.
      dims: ``[m]`` int retained residual dimensions ``D`` (ascending indices into ``0..n-1``).
      q: ``[L, m, m]`` float32 query Grams restricted to ``D`` (up to a positive scale per layer).
      k: ``[L, m, m]`` float32 key Grams restricted to ``D``.
      hidden_size: the sketched model's ``n``.
      name: the model's identifier (for reports).
    """

    tokens: tuple[str, ...]
    embedding: np.ndarray
    dims: np.ndarray
    q: np.ndarray
    k: np.ndarray
    hidden_size: int
    name: str = ""

    @property
    def num_layers(self) -> int:
        return int(self.q.shape[0])

    @property
    def m(self) -> int:
        return int(self.dims.size)

    def grams(self) -> GramSet:
        """The retained Grams as an in-memory :class:`GramSet` (``n`` = ``m``)."""
        return GramSet(self.num_layers, self.m, "qk", arrays=(self.q, self.k))


@dataclasses.dataclass(frozen=True)
class ModelSide:
    """What a scan reads or computes once for its model and reuses for every entry.

    Attributes:
      embedding: the model's embedding from ``read_embedding`` (read once: its checks read the map).
      token_grams: the model's token Grams for ``auto``'s token similarity, by shared rows.
      rows: :func:`sketch_rows` by the sketch's token subset (entries of one tokenizer share it).

    The model's shared embedding rows enter the alignment as one float32 block (``float_rows``),
    so their gather and conversion are paid once per token subset, not once per entry.
    """

    embedding: np.ndarray
    token_grams: TokenGrams = dataclasses.field(default_factory=TokenGrams)
    rows: dict = dataclasses.field(default_factory=dict)  # sketch token subset -> SketchRows
    _float_rows: dict = dataclasses.field(default_factory=dict, repr=False)

    def float_rows(self, ids: np.ndarray) -> np.ndarray:
        """``embedding[ids]`` as float32 (exact for every float type a checkpoint stores), kept
        for the last token subset: entries of one tokenizer share their shared rows (a scan's
        workers may ask at once: each gets a whole block, computed twice at worst)."""
        key = ids.tobytes()
        rows = self._float_rows.get(key)
        if rows is None:
            rows = np.asarray(self.embedding[ids], np.float32)
            self._float_rows.clear()
            self._float_rows[key] = rows
        return rows

    @classmethod
    def of(cls, model: PreparedModel) -> ModelSide:
        return cls(read_embedding(model.resolved))


class SketchRows(NamedTuple):
    """Embedding rows of the tokens a model shares with a sketch, in the same order.

    Attributes:
      model: ``[T]`` rows of the model's embedding.
      sketch: ``[T]`` rows of the sketch's embedding.
    """

    model: np.ndarray
    sketch: np.ndarray


def sketch_rows(model: PreparedModel, sketch: Sketch, side: ModelSide | None = None) -> SketchRows:
    """The sketch's tokens present in the model's vocabulary, within its embedding rows (kept in
    ``side`` when given)."""
    known = None if side is None else side.rows.get(sketch.tokens)
    if known is not None:
        return known
    tokens, rows = model.vocab.tokens, model.resolved.vocab_rows
    pairs = [(i, j) for j, t in enumerate(sketch.tokens) if (i := tokens.get(t, rows)) < rows]
    ids = np.asarray(sorted(pairs), np.int64).reshape(-1, 2)
    found = SketchRows(ids[:, 0], ids[:, 1])
    if side is not None:
        side.rows[sketch.tokens] = found
    return found


def _checked_cross(emb_base, emb_target, ids_base, ids_target, base_is_model: bool,
                   model: PreparedModel) -> EmbeddingCross:
    """The pair's embedding sums, checked as ``engine.align.align_pair`` checks them (the model's
    embedding is intact; the shared rows can identify an alignment, else ``DegenerateAlignment``)."""
    cross = embedding_cross(emb_base, emb_target, ids_base, ids_target)
    check_embedding_sums(model.resolved, cross.sq_base if base_is_model else cross.sq_target)
    sketch_name = "the sketch"
    check_alignment_evidence(cross, model.path if base_is_model else sketch_name,
                             sketch_name if base_is_model else model.path)
    return cross


def _partial_rotation(emb_model, emb_sketch, ids_model, ids_sketch) -> np.ndarray:
    """``[n, m]`` orthonormal columns mapping the model's dimensions onto the sketch's ``D``.

    Orthogonal Procrustes onto only ``m < n`` of the base's columns is biased (the polar factor
    of ``E^T E R`` is not ``R`` unless ``E^T E`` is isotropic); the least-squares map
    ``E_model R ~ E_sketch`` is exact for a rotated model when the shared rows span the model's
    dimensions (``T >= n``), and its polar factor keeps ``R^T K R`` a Gram.
    """
    e = np.asarray(emb_model[ids_model], np.float64)
    d = np.asarray(emb_sketch[ids_sketch], np.float64)
    fit = np.linalg.lstsq(e, d, rcond=None)[0]
    u, _, vt = np.linalg.svd(fit, full_matrices=False)
    return (u @ vt).astype(np.float32)


def _gathered(grams: GramSet, align: PairAlignment) -> GramSet:
    """The model's Grams aligned onto the sketch's ``m`` dimensions, in memory: gathered at
    ``p(D)`` with signs straight from the cached files (only the rows used are read), or rotated
    a chunk of layers at a time."""
    layers = grams.num_layers
    if align.rotation is not None:
        chunk = chunk_layers_for(grams.n, grams.n, layers)
        out = [np.empty((layers, align.matched_dims, align.matched_dims), np.float32) for _ in range(2)]
        for start in range(0, layers, chunk):
            stop = min(start + chunk, layers)
            for j, x in enumerate(grams.padded(list(range(start, stop)), chunk)):
                out[j][start:stop] = np.asarray(align.apply(jax.device_put(x)))[: stop - start]
        return GramSet(layers, align.matched_dims, "qk", arrays=tuple(out))
    signs = align.signs.astype(np.float32)
    outer = signs[:, None] * signs[None, :]
    out = grams.gather(align.perm.astype(np.int64))  # only the values used are read from the cache
    for stack in out:
        stack *= outer
    return GramSet(layers, align.matched_dims, "qk", arrays=out)


@dataclasses.dataclass(frozen=True)
class _Aligned(PairAlignment):
    """The alignment of Grams that are already aligned (gathered at ``p(D)``): no copy is made."""

    def gather(self) -> tuple[None, None]:
        return None, None

    def apply(self, grams: jax.Array) -> jax.Array:
        return grams


def _identity(m: int, like: PairAlignment) -> PairAlignment:
    return _Aligned(like.base_is_a, np.arange(m, dtype=np.int32), np.ones(m, np.float32), None, m, like.diagnostics,
                    like.vocabulary)


def score_against_sketch(model: PreparedModel, sketch: Sketch, options: PairOptions = PairOptions(),
                         timings: dict | None = None, side: ModelSide | None = None) -> PairResult:
    """Scores a prepared model (A) against a sketch (B); run under ``jax.default_device``.

    Args:
      model: the full model (its Gram fingerprint, cached or in memory).
      sketch: the other model's sketch.
      options: layer matching and alignment (``mlp`` is not part of a sketch and is ignored).
      timings: when given, receives ``alignment_s`` and ``scores_s``.
      side: what a scan reuses for every entry (made here when not given).

    Returns:
      The pair's :class:`PairResult`, model A = ``model``, model B = the sketched model.

    Raises:
      VocabularyError: the model shares no token with the sketch's token subset.
      DegenerateAlignment: the shared rows cannot identify the alignment (as in ``compare``).
      AWMError: a damaged embedding or fingerprint.
    """
    timings = {} if timings is None else timings
    t = time.perf_counter()
    side = ModelSide.of(model) if side is None else side
    rows = sketch_rows(model, sketch, side)
    if rows.model.size == 0:
        raise VocabularyError(f"{model.path} shares none of the {len(sketch.tokens)} sketched tokens of "
                              f"{sketch.name or 'the catalogue entry'}; the dimensions cannot be aligned")
    emb = side.float_rows(rows.model)  # the model's shared rows, in the order of rows.model
    rows = SketchRows(np.arange(rows.model.size, dtype=np.int64), rows.sketch)
    # The engine's base is the wider model, ties the first (here: the model); the sketch can only
    # be the base when it keeps at least as many dimensions as the model has.
    sketch_is_base = sketch.hidden_size > model.hidden_size and sketch.m >= model.hidden_size

    # embedding rows as the engine orders them: base first
    if sketch_is_base:
        ordered = (sketch.embedding, emb, rows.sketch, rows.model)
    else:
        ordered = (emb, sketch.embedding, rows.model, rows.sketch)
    cross = _checked_cross(*ordered, not sketch_is_base, model)
    assignment = assign_dimensions(cross.cosine())
    diagnostics = assignment.diagnostics()

    def alignment(rotation: np.ndarray | None) -> PairAlignment:
        return PairAlignment(not sketch_is_base, assignment.perm, assignment.signs, rotation, assignment.base_dims,
                             diagnostics, {})

    def rotation() -> np.ndarray:
        fitted = orthogonal_procrustes(cross)
        diagnostics.update(permutation_fit=permutation_fit(cross, assignment), rotation_fit=fitted.fit)
        if not sketch_is_base and sketch.m < sketch.hidden_size:
            return _partial_rotation(*ordered)
        return fitted.matrix

    def scored_grams(align: PairAlignment):
        if sketch_is_base:
            return sketch.grams(), model.grams, align
        # the model's Grams already aligned onto D: an identity alignment scores them
        return _gathered(model.grams, align), sketch.grams(), _identity(align.matched_dims, align)

    used, reason = options.alignment, f"requested {options.alignment}"
    if options.alignment == "auto":  # as the engine decides (numerics.auto_alignment)
        permuted = scored_grams(alignment(None))
        pairs = probe_pairs(permuted[0].num_layers, permuted[1].num_layers)

        def probed(grams) -> float:
            gb_, gt_, scored_ = grams
            return probe_score(gb_.take([i for i, _ in pairs]), gt_.take([j for _, j in pairs]), scored_.apply)

        rotated = []

        def rotated_probe() -> float:
            rotated.append(scored_grams(alignment(rotation())))
            return probed(rotated[0])

        used, reason, probe = auto_alignment(pairs, assignment.target_dims, probed(permuted),
                                             lambda: token_similarity(*ordered, grams=side.token_grams), rotated_probe)
        diagnostics.update(probe.diagnostics())
        diagnostics.setdefault("permutation_fit", permutation_fit(cross, assignment))
        gb, gt, scored = rotated[0] if used == "orthogonal" else permuted
    else:
        gb, gt, scored = scored_grams(alignment(rotation() if options.alignment == "orthogonal" else None))
    diagnostics.update(mode=options.alignment, used=used, reason=reason)
    del emb
    timings["alignment_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if gb.num_layers == gt.num_layers:
        pairing = layer_pairing(options.layer_match, matched=score_equal_depth(gb, gt, scored))
    else:
        pairing = layer_pairing(options.layer_match, grids=score_grid(gb, gt, scored))
    timings["scores_s"] = time.perf_counter() - t
    n_model, n_sketch = model.hidden_size, sketch.hidden_size
    diagnostics = dict(diagnostics, sketch_dims=sketch.m, scored_dims=scored.matched_dims)
    vocabulary = {"shared_tokens": int(rows.model.size), "sketch_tokens": len(sketch.tokens),
                  "vocab_a": len(model.vocab)}
    result = assemble(pairing, not sketch_is_base, min(n_model, n_sketch), max(n_model, n_sketch),
                      min(n_model, n_sketch), diagnostics, vocabulary)
    return dataclasses.replace(result, base="a" if n_model >= n_sketch else "b")
