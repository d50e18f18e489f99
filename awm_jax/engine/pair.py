"""The pair engine: two prepared models in, one :class:`~awm_jax.report.PairResult` out.

:func:`score_pair` is the single code path from prepared models to a verdict (alignment ->
layer scores -> layer pairing -> aggregate -> statistics); ``compare``, the audit's cells and
any later caller run it, so every option works everywhere and equal inputs give equal bits.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import jax
import numpy as np

from awm_jax._version import __version__
from awm_jax.engine.align import align_pair, settle_auto
from awm_jax.engine.layers import LayerPairing, score_layers
from awm_jax.engine.models import PreparedModel, prepare_model
from awm_jax.errors import UsageError
from awm_jax.fingerprint import FingerprintCache
from awm_jax.numerics.statistics import decide, verdict, z_reference
from awm_jax.options import DEFAULT_ALIGNMENT, DEFAULT_NORM_GAINS, DEVICES, PairOptions, check_choice
from awm_jax.progress import stage
from awm_jax.report import CompareResult, LayerScore, PairResult

__all__ = ["assemble", "compare", "environment", "score_pair", "select_device"]


def select_device(name: str) -> jax.Device:
    """The JAX device for ``auto``/``cpu``/``gpu``/``tpu``; a missing one is an error, not a fallback."""
    check_choice("device", name, DEVICES)
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


def environment(device: jax.Device | None = None) -> dict:
    """Versions, device, dtype and matmul precision of this run, for reports."""
    import jaxlib
    import scipy

    device = device or jax.config.jax_default_device or jax.devices()[0]
    return {
        "awm_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__, "device": f"{device.platform}:{device.device_kind}", "dtype": "float32",
        "precision": "HIGHEST",
    }


def assemble(pairing: LayerPairing, base_is_a: bool, narrowest: int, base_dims: int, matched_dims: int,
             alignment: dict, vocabulary: dict) -> PairResult:
    """Aggregates a pair's layer scores into its :class:`PairResult` (docs/method.md steps 8-9 and the
    calibrated verdict)."""
    layers = []
    for idx, (pb, pt) in enumerate(pairing.pairs):
        ia, ib = (pb, pt) if base_is_a else (pt, pb)
        mlp_score = None if pairing.mlp is None else float(pairing.mlp[idx])
        layers.append(LayerScore(a_layer=ia, b_layer=ib, wq=float(pairing.grid_q[pb, pt]),
                                 wk=float(pairing.grid_k[pb, pt]), mlp=mlp_score))
    layers.sort(key=lambda l: l.a_layer)
    s_q = float(np.mean([l.wq for l in layers]))
    s_k = float(np.mean([l.wk for l in layers]))
    mean = (s_q + s_k) / 2
    z = z_reference(mean)
    decision = decide(z, pairing.calibrated, narrowest)
    warnings = list(decision.warnings)
    if base_dims != matched_dims:
        warnings.append(f"widths differ ({base_dims} vs {matched_dims}): only matched dimensions are scored")
    return PairResult(
        base="a" if base_is_a else "b", wq=s_q, wk=s_k, mean=mean,
        mlp=None if pairing.mlp is None else float(np.mean(pairing.mlp)), z_reference=z, reference_verdict=verdict(z),
        verdict=decision.verdict, verdict_rule=decision.rule, layer_match=pairing.mode, layers=tuple(layers), alignment=alignment,
        vocabulary=vocabulary, calibrated=pairing.calibrated.to_dict(), warnings=tuple(warnings),
    )


def score_pair(a: PreparedModel, b: PreparedModel, options: PairOptions = PairOptions(),
               timings: dict | None = None) -> PairResult:
    """Scores two prepared models (docs/method.md steps 1-9); run under ``jax.default_device``.

    Args:
      a: model A.
      b: model B.
      options: layer matching, alignment and MLP evidence.
      timings: when given, receives seconds per stage of this pair's work.

    Raises:
      AWMError: the pair cannot be scored (no shared tokens, a damaged embedding...).
    """
    timings = {} if timings is None else timings
    with stage("aligning hidden dimensions (embedding columns)"):
        align = align_pair(a, b, options.alignment, timings)
    base, target = (a, b) if align.base_is_a else (b, a)
    t = time.perf_counter()
    with stage("scoring layers"):
        pairing = score_layers(base, target, align, options.layer_match, options.mlp)
        if align.pending is not None:  # auto: decided on the permutation's scores
            align = settle_auto(align, base, target, pairing.grid_q, pairing.grid_k, timings)
            if align.rotation is not None:  # a rotated copy: scored again under the rotation
                pairing = score_layers(base, target, align, options.layer_match, options.mlp)
    timings["scores_s"] = time.perf_counter() - t
    return assemble(pairing, align.base_is_a, min(a.hidden_size, b.hidden_size), align.base_dims, align.matched_dims,
                    align.diagnostics, align.vocabulary)


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
    alignment: str = DEFAULT_ALIGNMENT,
    mlp: bool = False,
    norm_gains: str = DEFAULT_NORM_GAINS,
    fetch: str = "partial",
) -> CompareResult:
    """Runs the AWM lineage test on two models.

    Args:
      model_a: folder of model A (paths are resolved from the current directory), or a hub id
        ``owner/name[@revision]`` (downloaded into the hub cache: only config, tokenizer and
        safetensors weights).
      model_b: folder or hub id of model B.
      layer_match: pairing for different depths, ``"assignment"`` (the paper's) or ``"monotone"``.
      device: ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"tpu"``.
      cache: use the fingerprint cache (per-model Grams are stored and reused).
      cache_dir: cache folder (default: ``$AWM_JAX_CACHE`` or the XDG cache folder).
      layout_a: force A's layout (a registry name or a layout file), else detected.
      layout_b: likewise for B.
      alignment: ``"auto"`` (default: the paper's signed permutation unless the pair is a rotated
        copy, see ``numerics.auto_alignment``), ``"assignment"`` (always the signed permutation) or
        ``"orthogonal"`` (always the Procrustes rotation).
      mlp: also score the MLP input matrices (gate and up; all experts of a mixture), reported
        beside the attention scores (not part of the verdict).
      norm_gains: ``"fold"`` (default: each pre-norm gain folded into the matrices that read the
        norm, so norm folding cannot change a score) or ``"ignore"`` (the stored matrices: the
        paper's computation).
      fetch: for a hub id, ``"partial"`` (default: each shard's header, then only the byte ranges
        of the tensors read, kept in a partial snapshot of the hub cache) or ``"full"`` (whole
        weight files into the standard snapshot).

    Returns:
      A frozen :class:`~awm_jax.report.CompareResult`.

    Raises:
      AWMError: any problem with the input (the subclass says which kind).
    """
    options = PairOptions(layer_match=layer_match, alignment=alignment, mlp=mlp, norm_gains=norm_gains)
    dev = select_device(device)
    t_start = time.perf_counter()
    store = FingerprintCache(cache_dir) if cache else None
    timings: dict = {}
    with jax.default_device(dev):
        a = prepare_model(model_a, layout=layout_a, cache=store, mlp=mlp, norm_gains=options.norm_gains, fetch=fetch)
        b = prepare_model(model_b, layout=layout_b, cache=store, mlp=mlp, norm_gains=options.norm_gains, fetch=fetch)
        t = time.perf_counter()
        with _compile_timer(timings):
            pair = score_pair(a, b, options, timings)
        timings["pair_s"] = time.perf_counter() - t
    for key in ("open_s", "weights_read_s", "gram_s"):
        timings[key] = a.timings.get(key, 0.0) + b.timings.get(key, 0.0)
    timings["total_s"] = time.perf_counter() - t_start
    return CompareResult(**pair.pair_fields(), model_a=a.summary(), model_b=b.summary(), timings=timings,
                         environment=environment(dev))
