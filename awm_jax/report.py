"""The comparison result: a frozen, JSON-serialisable record and its text rendering."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

__all__ = ["ModelInfo", "ModelSummary", "LayerScore", "CompareResult"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What was read of one model (shared by comparison and audit reports).

    Attributes:
      path: absolute path of the model folder.
      layout: layout name.
      hidden_size: residual width.
      num_layers: decoder layers.
      q_dim: rows of each ``Wq``.
      k_dim: rows of each ``Wk``.
      vocab_size: tokens in its vocabulary.
      vocab_source: the tokenizer file read.
      embedding_rows: rows of the input embedding.
      dtype: stored dtype of the embedding.
    """

    path: str
    layout: str
    hidden_size: int
    num_layers: int
    q_dim: int
    k_dim: int
    vocab_size: int
    vocab_source: str
    embedding_rows: int
    dtype: str


@dataclasses.dataclass(frozen=True)
class ModelSummary(ModelInfo):
    """A compared model: :class:`ModelInfo`, and whether its Grams came from the cache
    (``fingerprint_cached``)."""

    fingerprint_cached: bool


@dataclasses.dataclass(frozen=True)
class LayerScore:
    """Scores of one pair of matched layers.

    Attributes:
      a_layer: layer index in model A.
      b_layer: layer index in model B.
      wq: unbiased CKA of the aligned query projections.
      wk: unbiased CKA of the aligned key projections.
      mlp: unbiased CKA of the aligned MLP inputs (when asked for).
    """

    a_layer: int
    b_layer: int
    wq: float
    wk: float
    mlp: float | None = None

    @property
    def mean(self) -> float:
        return (self.wq + self.wk) / 2


@dataclasses.dataclass(frozen=True)
class CompareResult:
    """Everything ``compare`` found about one pair of models.

    Attributes:
      model_a: summary of model A.
      model_b: summary of model B.
      base: ``"a"`` or ``"b"``, the model whose dimensions were aligned (the wider; ties A).
      wq: mean over paired layers of the query scores.
      wk: mean of the key scores.
      mean: ``(wq + wk) / 2``, the AWM similarity.
      mlp: mean over paired layers of the MLP-input scores (``None`` unless asked for).
      z_reference: signed z-score of ``mean`` against the published negative reference.
      reference_verdict: the verdict from ``z_reference`` alone (``statistics.verdict``).
      verdict: ``derived``, ``independent`` or ``inconclusive``: the calibrated test's when it
        has a p-value, else ``reference_verdict``.
      verdict_rule: how the verdict was decided.
      layer_match: ``equal-depth``, ``assignment`` or ``monotone``.
      layers: per-layer scores of the matched layers, by A's layer index.
      alignment: alignment diagnostics (with ``norm_gains``, the norm-gain mode of both fingerprints).
      vocabulary: shared-token counts.
      calibrated: the cross-layer test (``statistics.CalibratedTest``): p-value, z, verdict, method.
      timings: seconds per stage.
      environment: versions, device, dtype, precision.
      warnings: caveats the verdict should be read with.
    """

    model_a: ModelSummary
    model_b: ModelSummary
    base: str
    wq: float
    wk: float
    mean: float
    mlp: float | None
    z_reference: float
    reference_verdict: str
    verdict: str
    verdict_rule: str
    layer_match: str
    layers: tuple[LayerScore, ...]
    alignment: dict
    vocabulary: dict
    calibrated: dict
    timings: dict
    environment: dict
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON dict of every field (per-layer scores keyed by A's layer index too)."""
        out = dataclasses.asdict(self)
        out["layers"] = [dict(dataclasses.asdict(l), mean=l.mean) for l in self.layers]
        out["per_layer_wq"] = {str(l.a_layer): l.wq for l in self.layers}
        out["per_layer_wk"] = {str(l.a_layer): l.wk for l in self.layers}
        out["warnings"] = list(self.warnings)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def _calibrated_line(self) -> str:
        c = self.calibrated
        if c["p_value"] is None:
            return f"  p          n/a     ({c['method']})"
        p = f"{c['p_value']:.3g}" if c["p_value"] > 0 else "< 1e-300"
        return (f"  p          {p}   (z {c['z']:.2f} vs this pair's mismatched layers, "
                f"mean {c['null_mean']:.4f} +- {c['null_std']:.4f})")

    def render_text(self) -> str:
        """A readable report for the terminal."""
        a, b = self.model_a, self.model_b

        def model_line(tag: str, m: ModelSummary) -> str:
            return (f"  {tag}: {m.path}\n      layout {m.layout}, hidden {m.hidden_size}, {m.num_layers} layers, "
                    f"Q/K rows {m.q_dim}/{m.k_dim}, vocab {m.vocab_size} ({m.dtype})"
                    f"{', fingerprint cached' if m.fingerprint_cached else ''}")

        al, vo = self.alignment, self.vocabulary
        lines = [
            "AWM lineage comparison",
            model_line("A", a),
            model_line("B", b),
            "",
            f"  Wq score   {self.wq: .6f}",
            f"  Wk score   {self.wk: .6f}",
            f"  mean       {self.mean: .6f}",
            *([f"  MLP score  {self.mlp: .6f}   (gate/up inputs; evidence beside the verdict)"] if self.mlp is not None else []),
            f"  z          {self.z_reference: .2f}   (signed, vs published reference of independent 7B/13B pairs: "
            f"{self.reference_verdict})",
            self._calibrated_line(),
            f"  verdict    {self.verdict.upper()}",
            f"             rule: {self.verdict_rule}",
            "",
            f"  alignment: base = model {self.base.upper()}; {vo['shared_rows']} shared tokens "
            f"(dropped beyond embedding: A {vo['dropped_a']}, B {vo['dropped_b']}); "
            f"{al['matched_dims']}/{al['base_dims']} dims matched, {al['sign_flips']} sign flips, "
            f"mean |cos| {al['mean_abs_cos']:.4f}",
            f"  alignment used: {al['used']} ({al['reason']})",
            f"  norm gains: {al.get('norm_gains', 'ignore')} "
            f"({'folded into Wq/Wk before the Grams' if al.get('norm_gains') == 'fold' else 'not folded: the paper'})",
            f"  layers ({self.layer_match}):   A  ->  B      Wq        Wk",
        ]
        lines += [f"                         {l.a_layer:3d} -> {l.b_layer:3d}  {l.wq: .5f}  {l.wk: .5f}" for l in self.layers]
        t = self.timings
        lines.append("  time: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in t.items()
                                           if k.endswith("_s") and isinstance(v, float) and math.isfinite(v)))
        env = self.environment
        lines.append(f"  device {env['device']}, {env['dtype']}, matmul precision {env['precision']}, "
                     f"awm_jax {env['awm_jax']}, jax {env['jax']}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)
