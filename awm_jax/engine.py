"""The comparison pipeline: two model folders in, one :class:`CompareResult` out.

checkpoint -> layout -> vocabulary -> alignment -> per-model Grams (fingerprints) ->
aligned unbiased CKA per layer -> layer pairing -> aggregate -> statistics -> report.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple
from pathlib import Path
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np

from awm_jax._version import __version__
from awm_jax.numerics.alignment import (
    ALIGNMENT_MODES,
    assign_dimensions,
    check_alignment_evidence,
    choose_alignment,
    embedding_cross,
    orthogonal_procrustes,
    permutation_fit,
)
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.errors import NumericalError, UsageError
from awm_jax.fingerprint import FingerprintCache, GramSet, chunk_layers_for, model_grams
from awm_jax.numerics.kernels import (
    align_grams,
    grid_cka,
    hsic_parts_layers,
    paired_cka,
    paired_cka_from_parts,
    rotate_grams,
)
from awm_jax.numerics.layer_match import LAYER_MATCH_MODES, match_layers
from awm_jax.layouts import ResolvedLayout, detect
from awm_jax.report import CompareResult, LayerScore, ModelInfo, ModelSummary
from awm_jax.numerics.statistics import (
    CalibratedTest,
    cross_layer_test,
    decide,
    matching_null_test,
    verdict,
    z_reference,
)
from awm_jax.io.vocab import Vocabulary, load_vocabulary, shared_rows

__all__ = [
    "DEVICES",
    "LayerPairing",
    "PairVerdict",
    "PreparedModel",
    "assemble",
    "check_embedding_sums",
    "compare",
    "layer_pairing",
    "locate_model",
    "mismatch_shifts",
    "prepare_model",
    "read_embedding",
    "score_grid",
    "score_pair",
    "select_device",
]

DEVICES = ("auto", "cpu", "gpu", "tpu")


def select_device(name: str) -> jax.Device:
    """The JAX device for ``auto``/``cpu``/``gpu``/``tpu``; a missing one is an error, not a fallback."""
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        have = sorted({d.platform for d in jax.devices()})
        raise UsageError(
            f"--device {name}: JAX sees no {name} here (available: {', '.join(have)}); install jax with {name} "
            "support or choose an available device"
        ) from None


_compile = threading.local()


def _on_duration(event: str, duration: float, **_: object) -> None:
    if "backend_compile" in event and getattr(_compile, "seconds", None) is not None:
        _compile.seconds += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@contextmanager
def _compile_timer(timings: dict):
    _compile.seconds = 0.0
    try:
        yield
    finally:
        timings["compile_s"] = _compile.seconds
        _compile.seconds = None


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    """One model ready to be compared: its layout, vocabulary and per-layer Grams.

    Attributes:
      resolved: the bound layout (reads the embedding on demand).
      vocab: the vocabulary.
      grams: the Q/K Gram fingerprint (from the cache or computed).
      cached: whether the Grams came from the cache.
      timings: seconds spent preparing (``open_s``, ``weights_read_s``, ``gram_s``).
      mlp_grams: the MLP-input Gram fingerprint, when asked for.
    """

    resolved: ResolvedLayout
    vocab: Vocabulary
    grams: GramSet
    cached: bool
    timings: dict
    mlp_grams: GramSet | None = None

    @property
    def path(self) -> str:
        return str(self.resolved.ckpt.root)

    def info(self) -> ModelInfo:
        """What was read of the model, for reports."""
        r = self.resolved
        return ModelInfo(
            path=self.path, layout=r.name, hidden_size=r.hidden_size, num_layers=r.num_layers, q_dim=r.q_dim,
            k_dim=r.k_dim, vocab_size=len(self.vocab), vocab_source=self.vocab.source, embedding_rows=r.vocab_rows,
            dtype=r.ckpt.info(r.embedding_name).dtype.lower(),
        )


def locate_model(spec: str | os.PathLike) -> Path:
    """A local model folder for ``spec``: a path as given (the checkpoint reader reports any problem
    with it), or, when nothing exists at that path and it reads as ``owner/name[@revision]``, the
    hub snapshot (downloaded as needed by :func:`awm_jax.io.hub.resolve_model`)."""
    from awm_jax.io.hub import parse_hub_id, resolve_model

    if os.path.lexists(spec) or parse_hub_id(os.fspath(spec)) is None:
        return Path(spec)
    return resolve_model(spec)


def prepare_model(
    path: str | os.PathLike, *, layout: str | None = None, cache: FingerprintCache | None = None, mlp: bool = False
) -> PreparedModel:
    """Opens a model (folder or hub id), reads its vocabulary and gets its Gram fingerprint (cached or computed).

    Run under ``jax.default_device(...)`` to choose where the Grams are computed.
    """
    t = time.perf_counter()
    ckpt = Checkpoint(locate_model(path))
    resolved = detect(ckpt, layout)
    vocab = load_vocabulary(ckpt.root)
    timings: dict = {"open_s": time.perf_counter() - t}
    grams = model_grams(resolved, cache, timings)
    cached = bool(timings.pop("cache_hit"))
    mlp_grams = model_grams(resolved, cache, timings, kind="mlp") if mlp else None
    timings.pop("cache_hit", None)
    timings["weights_read_s"] = timings.pop("read_s", 0.0)  # waiting on the reader thread
    return PreparedModel(resolved, vocab, grams, cached, timings, mlp_grams)


def read_embedding(r: ResolvedLayout) -> np.ndarray:
    """The input embedding in its stored dtype, memory-mapped where it can be (only the shared
    rows are ever copied, a block at a time); NaN/Inf in the rows used are caught by
    :func:`check_embedding_sums`, without a full float32 copy here."""
    emb = r.read_embedding(mapped=True)
    if not np.issubdtype(emb.dtype, np.floating) and "float" not in emb.dtype.name:
        raise NumericalError(f"{r.ckpt.root}: embedding {r.embedding_name} is stored as {emb.dtype}; dequantise it first")
    if not np.any(emb):
        raise NumericalError(f"{r.ckpt.root}: embedding {r.embedding_name} is all zeros; nothing to align")
    return emb


def check_embedding_sums(r: ResolvedLayout, squares: np.ndarray) -> None:
    """Refuses an embedding whose shared rows hold NaN/Inf (``NumericalError``), seen in its
    column sums of squares (``squares``, from ``embedding_cross``): a non-finite value in any
    shared row makes its column's sum non-finite."""
    bad = int((~np.isfinite(squares)).sum())
    if bad:
        raise NumericalError(
            f"{r.ckpt.root}: embedding {r.embedding_name} holds NaN/Inf values in the shared-token rows "
            f"({bad} of {squares.size} columns affected); the weights are damaged: fetch them again"
        )


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


def _prefetched(read, args: list[tuple]):
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


def _score_equal_depth(gb: GramSet, gt: GramSet, align) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Matched-layer Q and K scores, plus the mean (Q+K)/2 scores of the shifted (mismatched) pairs.

    Each aligned base chunk (and its HSIC parts) is formed once and scored against the matched
    target layers and each shifted set of target layers.
    """
    layers = gb.num_layers
    chunk = chunk_layers_for(gb.n, gb.n, layers)
    wq, wk = np.empty(layers), np.empty(layers)
    shifts = mismatch_shifts(layers)
    off = {s: np.empty(layers) for s in shifts}
    starts = range(0, layers, chunk)
    reads = [(g, [(i + shift) % layers for i in range(start, min(start + chunk, layers))])
             for start in starts for g, shift in ((gb, 0), *((gt, s) for s in (0, *shifts)))]
    grams = _prefetched(lambda g, ls: g.padded(ls, chunk), reads)
    for start in starts:
        stop = min(start + chunk, layers)
        base = [align(jax.device_put(x)) for x in next(grams)]
        bparts = [hsic_parts_layers(x) for x in base]
        for shift in (0, *shifts):
            targets = [jax.device_put(x) for x in next(grams)]
            sq, sk = (np.asarray(paired_cka_from_parts(base[j], bparts[j], targets[j], hsic_parts_layers(targets[j])))
                      [: stop - start] for j in range(2))
            if shift == 0:
                wq[start:stop], wk[start:stop] = sq, sk
            else:
                off[shift][start:stop] = (sq + sk) / 2
    return wq, wk, off


def _score_pairs(gb: GramSet, gt: GramSet, align, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Scores of the given (base layer, target layer) pairs for a one-array fingerprint kind."""
    chunk = chunk_layers_for(gb.n, gb.n, len(pairs))
    out = np.empty(len(pairs))
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        (kb,) = gb.padded([b for b, _ in part], chunk)
        (kt,) = gt.padded([t for _, t in part], chunk)
        scores = paired_cka(align(jax.device_put(kb)), jax.device_put(kt))
        out[start : start + len(part)] = np.asarray(scores)[: len(part)]
    return out


def score_grid(gb: GramSet, gt: GramSet, align) -> tuple[np.ndarray, np.ndarray]:
    """Every aligned base layer against every target layer (different depths): the ``[L_b, L_t]``
    Q and K score grids, a chunk of base layers against a chunk of target layers at a time.

    Args:
      gb: the base model's Q/K Grams.
      gt: the target model's.
      align: applies the alignment to a chunk of base Grams (``align_grams`` or ``rotate_grams``).
    """
    cb = chunk_layers_for(gb.n, gb.n, gb.num_layers)
    ct = chunk_layers_for(gt.n, gt.n, gt.num_layers)
    grid_q = np.empty((gb.num_layers, gt.num_layers))
    grid_k = np.empty_like(grid_q)
    for b0 in range(0, gb.num_layers, cb):
        b1 = min(b0 + cb, gb.num_layers)
        qb, kb = (align(jax.device_put(x)) for x in gb.padded(list(range(b0, b1)), cb))
        for t0 in range(0, gt.num_layers, ct):
            t1 = min(t0 + ct, gt.num_layers)
            qt, kt = (jax.device_put(x) for x in gt.padded(list(range(t0, t1)), ct))
            grid_q[b0:b1, t0:t1] = np.asarray(grid_cka(qb, qt))[: b1 - b0, : t1 - t0]
            grid_k[b0:b1, t0:t1] = np.asarray(grid_cka(kb, kt))[: b1 - b0, : t1 - t0]
    return grid_q, grid_k


@dataclasses.dataclass(frozen=True)
class PairVerdict:
    """A pair's layers, aggregate scores and verdict, assembled from its layer scores (ALGORITHM.md
    steps 7-9 and the calibrated test); ``compare`` and the audit both assemble through :func:`assemble`.

    Attributes:
      layers: the paired layers, in model A's layer order.
      wq: mean Q score over the paired layers.
      wk: mean K score.
      mean: ``(wq + wk) / 2``.
      z: the reference z-score of ``mean``; ``reference_verdict`` its verdict.
      layer_match: ``"equal-depth"`` or the pairing mode used.
      calibrated: the calibrated test.
      verdict: the verdict; ``rule`` the rule that gave it; ``warnings`` the caveats.
    """

    layers: tuple[LayerScore, ...]
    wq: float
    wk: float
    mean: float
    z: float
    reference_verdict: str
    layer_match: str
    calibrated: CalibratedTest
    verdict: str
    rule: str
    warnings: tuple[str, ...]


class LayerPairing(NamedTuple):
    """A pair's paired ``(base, target)`` layers, pairing mode (``"equal-depth"`` or the
    ``layer_match`` mode), ``[L_base, L_target]`` Q and K score grids and calibrated test."""

    pairs: list[tuple[int, int]]
    mode: str
    grid_q: np.ndarray
    grid_k: np.ndarray
    calibrated: CalibratedTest


def layer_pairing(layer_match: str, *, matched: tuple | None = None, grids: tuple | None = None) -> LayerPairing:
    """The paired layers, pairing mode, score grids and calibrated test of a pair.

    Args:
      layer_match: pairing for different depths.
      matched: equal depth: ``(wq, wk, off)``, the matched-layer Q and K scores and the mismatched
        scores per shift (``_score_equal_depth``).
      grids: different depths: ``(grid_q, grid_k)``, every base layer against every target layer.
    """
    if matched is not None:
        wq, wk, off = matched
        mismatched = np.concatenate(list(off.values())) if off else np.empty(0)
        return LayerPairing([(i, i) for i in range(len(wq))], "equal-depth", np.diag(wq), np.diag(wk),
                            cross_layer_test((wq + wk) / 2, mismatched))
    grid_q, grid_k = grids
    pairs = match_layers((grid_q + grid_k) / 2, layer_match)
    return LayerPairing(pairs, layer_match, grid_q, grid_k, matching_null_test((grid_q + grid_k) / 2, pairs, layer_match))


def assemble(pairing: LayerPairing, base_is_a: bool, narrowest: int, base_dims: int, matched_dims: int,
             mlp_scores: np.ndarray | None = None) -> PairVerdict:
    """Aggregates a pair's layer scores (``layer_pairing``'s result) into its :class:`PairVerdict`."""
    pairs, mode, grid_q, grid_k, calibrated = pairing
    layers = []
    for idx, (pb, pt) in enumerate(pairs):
        ia, ib = (pb, pt) if base_is_a else (pt, pb)
        mlp_score = None if mlp_scores is None else float(mlp_scores[idx])
        layers.append(LayerScore(a_layer=ia, b_layer=ib, wq=float(grid_q[pb, pt]), wk=float(grid_k[pb, pt]), mlp=mlp_score))
    layers.sort(key=lambda l: l.a_layer)
    s_q = float(np.mean([l.wq for l in layers]))
    s_k = float(np.mean([l.wk for l in layers]))
    mean = (s_q + s_k) / 2
    z = z_reference(mean)
    final_verdict, rule, warnings = decide(z, calibrated, narrowest)
    if base_dims != matched_dims:
        warnings.append(f"widths differ ({base_dims} vs {matched_dims}): only matched dimensions are scored")
    return PairVerdict(tuple(layers), s_q, s_k, mean, z, verdict(z), mode, calibrated, final_verdict, rule,
                       tuple(warnings))


def _summary(m: PreparedModel) -> ModelSummary:
    return ModelSummary(**dataclasses.asdict(m.info()), fingerprint_cached=m.cached)


def _environment(device: jax.Device) -> dict:
    import jaxlib
    import scipy

    return {
        "awm_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__, "device": f"{device.platform}:{device.device_kind}", "dtype": "float32",
        "precision": "HIGHEST",
    }


def _check_modes(layer_match: str, alignment: str) -> None:
    if layer_match not in LAYER_MATCH_MODES:
        raise UsageError(f"unknown layer match {layer_match!r}; choose one of {', '.join(LAYER_MATCH_MODES)}")
    if alignment not in ALIGNMENT_MODES:
        raise UsageError(f"unknown alignment {alignment!r}; choose one of {', '.join(ALIGNMENT_MODES)}")


def score_pair(
    a: PreparedModel, b: PreparedModel, *, layer_match: str = "assignment", alignment: str = "assignment"
) -> CompareResult:
    """Scores two prepared models (ALGORITHM.md steps 1-9); run under ``jax.default_device``.

    Args:
      a: model A.
      b: model B.
      layer_match: pairing for different depths, ``"assignment"`` or ``"monotone"``.
      alignment: ``"assignment"`` (the paper's), ``"orthogonal"`` or ``"auto"`` (``awm_jax.numerics.alignment``).

    Returns:
      The comparison (its ``timings`` cover this pair's work plus both models' preparation).
    """
    _check_modes(layer_match, alignment)
    timings: dict = {}
    t_start = time.perf_counter()
    base_is_a = a.resolved.hidden_size >= b.resolved.hidden_size
    base, target = (a, b) if base_is_a else (b, a)
    with _compile_timer(timings):
        t = time.perf_counter()
        shared = shared_rows(base.vocab, target.vocab, base.resolved.vocab_rows, target.resolved.vocab_rows)
        emb_base, emb_target = read_embedding(base.resolved), read_embedding(target.resolved)
        timings["embedding_read_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cross = embedding_cross(emb_base, emb_target, shared.ids_a, shared.ids_b)
        del emb_base, emb_target
        check_embedding_sums(base.resolved, cross.sq_base)
        check_embedding_sums(target.resolved, cross.sq_target)
        check_alignment_evidence(cross, base.path, target.path)
        timings["embedding_cosine_s"] = time.perf_counter() - t
        t = time.perf_counter()
        assignment = assign_dimensions(cross.cosine())
        timings["assignment_s"] = time.perf_counter() - t
        diagnostics = assignment.diagnostics()
        perm, signs = jnp.asarray(assignment.perm), jnp.asarray(assignment.signs)
        align = lambda grams: align_grams(grams, perm, signs)  # noqa: E731
        if alignment != "assignment":
            t = time.perf_counter()
            rotation = orthogonal_procrustes(cross)
            perm_fit = permutation_fit(cross, assignment)
            used, reason = choose_alignment(alignment, perm_fit, rotation.fit)
            timings["procrustes_s"] = time.perf_counter() - t
            diagnostics.update(permutation_fit=perm_fit, rotation_fit=rotation.fit)
            if used == "orthogonal":
                matrix = jnp.asarray(rotation.matrix)
                align = lambda grams: rotate_grams(grams, matrix)  # noqa: E731
        else:
            used, reason = "assignment", "requested assignment"
        diagnostics.update(mode=alignment, used=used, reason=reason)

        t = time.perf_counter()
        g_base, g_target = base.grams, target.grams
        if g_base.num_layers == g_target.num_layers:
            pairing = layer_pairing(layer_match, matched=_score_equal_depth(g_base, g_target, align))
        else:
            pairing = layer_pairing(layer_match, grids=score_grid(g_base, g_target, align))
        timings["scores_s"] = time.perf_counter() - t
        mlp_scores = None
        if base.mlp_grams is not None and target.mlp_grams is not None:
            t = time.perf_counter()
            mlp_scores = _score_pairs(base.mlp_grams, target.mlp_grams, align, pairing.pairs)
            timings["mlp_scores_s"] = time.perf_counter() - t
    for key in ("open_s", "weights_read_s", "gram_s"):
        timings[key] = a.timings.get(key, 0.0) + b.timings.get(key, 0.0)
    timings["pair_s"] = time.perf_counter() - t_start

    pv = assemble(pairing, base_is_a, min(a.resolved.hidden_size, b.resolved.hidden_size), assignment.base_dims,
                  assignment.target_dims, mlp_scores)
    dropped = (shared.dropped_a, shared.dropped_b) if base_is_a else (shared.dropped_b, shared.dropped_a)
    return CompareResult(
        model_a=_summary(a), model_b=_summary(b), base="a" if base_is_a else "b",
        wq=pv.wq, wk=pv.wk, mean=pv.mean, mlp=None if mlp_scores is None else float(np.mean(mlp_scores)),
        z_reference=pv.z, reference_verdict=pv.reference_verdict,
        verdict=pv.verdict, verdict_rule=pv.rule,
        layer_match=pv.layer_match, layers=pv.layers, alignment=diagnostics,
        vocabulary={"shared_tokens": shared.shared_tokens, "shared_rows": len(shared), "dropped_a": dropped[0],
                    "dropped_b": dropped[1], "vocab_a": len(a.vocab), "vocab_b": len(b.vocab)},
        calibrated=pv.calibrated.to_dict(),
        timings=timings, environment=_environment(jax.config.jax_default_device or jax.devices()[0]),
        warnings=pv.warnings,
    )


def compare(
    model_a: str | os.PathLike,
    model_b: str | os.PathLike,
    *,
    layer_match: str = "assignment",
    device: str = "auto",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    layout_a: str | None = None,
    layout_b: str | None = None,
    alignment: str = "assignment",
    mlp: bool = False,
) -> CompareResult:
    """Runs the AWM lineage test on two model folders.

    Args:
      model_a: folder of model A (paths are resolved from the current directory), or a hub id
        ``owner/name[@revision]`` (downloaded into the hub cache: only config, tokenizer and
        safetensors weights).
      model_b: folder of model B.
      layer_match: pairing for different depths, ``"assignment"`` (the paper's) or ``"monotone"``.
      device: ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"tpu"``.
      cache: use the fingerprint cache (per-model Grams are stored and reused).
      cache_dir: cache folder (default: ``$AWM_JAX_CACHE`` or the XDG cache folder).
      layout_a: force A's layout (a registry name or a layout file), else detected.
      layout_b: likewise for B.
      alignment: ``"assignment"`` (the paper's signed permutation), ``"orthogonal"`` (Procrustes
        rotation) or ``"auto"``.
      mlp: also score the MLP input matrices (gate and up; all experts of a mixture), reported
        beside the attention scores (not part of the verdict).

    Returns:
      A frozen :class:`CompareResult`.

    Raises:
      AWMError: any problem with the input (the subclass says which kind).
    """
    _check_modes(layer_match, alignment)
    dev = select_device(device)
    t = time.perf_counter()
    store = FingerprintCache(cache_dir) if cache else None
    with jax.default_device(dev):
        a = prepare_model(model_a, layout=layout_a, cache=store, mlp=mlp)
        b = prepare_model(model_b, layout=layout_b, cache=store, mlp=mlp)
        result = score_pair(a, b, layer_match=layer_match, alignment=alignment)
    result.timings["total_s"] = time.perf_counter() - t
    return result
