"""The comparison result: a frozen, JSON-serialisable record and its text rendering."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

__all__ = ["COMPARE_FORMAT", "CompareResult", "FileIdentity", "LayerScore", "ModelInfo", "ModelOrigin", "ModelSummary",
           "PairResult"]


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """One file a model was read from.

    Attributes:
      name: its name in the model folder.
      size: its size in bytes (for a partially downloaded shard, the whole file's).
      etag: the hub's content hash of the file (empty for a local folder).
    """

    name: str
    size: int
    etag: str = ""


@dataclasses.dataclass(frozen=True)
class ModelOrigin:
    """Who a model is: a hub repository at a commit, or a local folder (or file).

    Attributes:
      kind: ``"hub"``, ``"folder"`` or ``"file"``.
      path: the local folder (or file) read.
      repo_id: the hub repository (``owner/name``; hub only).
      revision: the revision asked for (a branch, tag or commit; hub only).
      commit: the commit it resolved to (hub only).
      download: ``"partial"`` (only the tensors read were fetched) or ``"full"`` (hub only).
      files: the files read, with sizes (and for the hub, etags).
    """

    kind: str
    path: str
    repo_id: str = ""
    revision: str = ""
    commit: str = ""
    download: str = ""
    files: tuple[FileIdentity, ...] = ()

    @property
    def label(self) -> str:
        """How the model is named to people: ``owner/name`` (``@revision`` unless ``main``), or the path."""
        if self.kind != "hub":
            return self.path
        return self.repo_id if self.revision in ("", "main") else f"{self.repo_id}@{self.revision}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelOrigin":
        """The record ``dataclasses.asdict`` wrote."""
        return cls(**{**d, "files": tuple(FileIdentity(**f) for f in d.get("files", ()))})


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
      form: what was read: ``"safetensors"``, a GGUF file and its quantisation types, or a LoRA
        adapter merged into its base.
      origin: who the model is: hub repository, revision, commit and file etags, or the local
        folder and its files' sizes.
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
    form: str
    origin: ModelOrigin

    def fields(self) -> dict[str, Any]:
        """This record's :class:`ModelInfo` fields, not converted (to build a subclass record from it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelInfo)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        """The record ``dataclasses.asdict`` wrote (this class or a subclass); a record written
        before models had an ``origin`` gets one naming its path."""
        fields = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name != "origin"}
        origin = d.get("origin")
        fields["origin"] = ModelOrigin.from_dict(origin) if origin else ModelOrigin("folder", d["path"])
        return cls(**fields)


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
class PairResult:
    """The evidence and verdict of one pair of models: what the pair engine returns for every
    caller (``compare``, the audit's cells, later callers), built once and serialised once.

    Attributes:
      base: ``"a"`` or ``"b"``, the model whose dimensions were aligned (the wider; ties A).
      wq: mean over paired layers of the query scores (NaN when the pair was not scored).
      wk: mean of the key scores.
      mean: ``(wq + wk) / 2``, the AWM similarity.
      mlp: mean over paired layers of the MLP-input scores (``None`` unless asked for).
      z_reference: signed z-score of ``mean`` against the published negative reference.
      reference_verdict: the verdict from ``z_reference`` alone (``statistics.verdict``).
      verdict: ``derived``, ``independent`` or ``inconclusive``: the calibrated test's when it
        has a p-value, else ``reference_verdict``; ``unscored`` when the pair was not scored.
      verdict_rule: how the verdict was decided.
      layer_match: ``equal-depth``, ``assignment`` or ``monotone``.
      layers: per-layer scores of the matched layers, by A's layer index.
      alignment: alignment diagnostics (with ``norm_gains``, the norm-gain mode of both fingerprints).
      vocabulary: shared-token counts.
      calibrated: the cross-layer test (``statistics.CalibratedTest``): p-value, z, verdict, method.
      warnings: caveats the verdict should be read with.
    """

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
    warnings: tuple[str, ...] = ()

    @property
    def p_value(self) -> float:
        """The calibrated p-value (NaN when the test has none)."""
        p = self.calibrated.get("p_value")
        return float("nan") if p is None else float(p)

    @classmethod
    def unscored(cls, base: str) -> "PairResult":
        """The record of a pair that could not be scored (NaN scores, verdict ``unscored``)."""
        nan = float("nan")
        return cls(base, nan, nan, nan, None, nan, "unscored", "unscored", "", "", (), {}, {}, {})

    def pair_fields(self) -> dict[str, Any]:
        """This record's :class:`PairResult` fields (to build a subclass record from it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(PairResult)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of every field (non-finite scores become ``None``; per-layer scores keyed
        by A's layer index too). Subclass records serialise their own fields through this too."""
        out = dataclasses.asdict(self)
        out["layers"] = [dict(dataclasses.asdict(l), mean=l.mean) for l in self.layers]
        out["per_layer_wq"] = {str(l.a_layer): l.wq for l in self.layers}
        out["per_layer_wk"] = {str(l.a_layer): l.wk for l in self.layers}
        out["warnings"] = list(self.warnings)
        out["p_value"] = None if math.isnan(self.p_value) else self.p_value
        for key in ("wq", "wk", "mean", "z_reference"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out

    def consistent(self) -> bool:
        """Whether the aggregate scores are those the per-layer scores give (as ``assemble``
        computes them) and an unscored record holds no scores: a record read back from a file
        that fails this was damaged."""
        import numpy as np

        if self.verdict == "unscored":
            return not self.layers and all(math.isnan(x) for x in (self.wq, self.wk, self.mean))
        if not self.layers:
            return False
        wq = float(np.mean([l.wq for l in self.layers]))
        wk = float(np.mean([l.wk for l in self.layers]))
        return (self.wq, self.wk, self.mean) == (wq, wk, (wq + wk) / 2) and self.base in ("a", "b")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairResult":
        """The record :meth:`to_dict` wrote (floats round-trip exactly through JSON)."""
        nan = float("nan")
        fields = {f.name: d[f.name] for f in dataclasses.fields(PairResult)}
        for key in ("wq", "wk", "mean", "z_reference"):
            fields[key] = nan if fields[key] is None else float(fields[key])
        fields["layers"] = tuple(LayerScore(**{k: v for k, v in l.items() if k != "mean"}) for l in d["layers"])
        fields["warnings"] = tuple(d["warnings"])
        for key in ("alignment", "vocabulary", "calibrated"):
            fields[key] = dict(sorted(fields[key].items()))
        return PairResult(**fields)


#: Schema of ``CompareResult.to_dict`` (``compare --json``).
COMPARE_FORMAT = "awm_jax.compare/2"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareResult(PairResult):
    """Everything ``compare`` found about one pair of models: the pair's :class:`PairResult`
    fields, and

    Attributes:
      model_a: summary of model A.
      model_b: summary of model B.
      timings: seconds per stage.
      environment: versions, device, dtype, precision.
    """

    model_a: ModelSummary
    model_b: ModelSummary
    timings: dict
    environment: dict

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON dict of every field, with its schema name under ``format``."""
        return {"format": COMPARE_FORMAT, **super().to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompareResult":
        """The record :meth:`to_dict` wrote."""
        return cls(**PairResult.from_dict(d).pair_fields(), model_a=ModelSummary.from_dict(d["model_a"]),
                   model_b=ModelSummary.from_dict(d["model_b"]), timings=dict(d["timings"]),
                   environment=dict(d["environment"]))

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
            o = m.origin
            where = m.path
            if o.kind == "hub":
                where = (f"{o.label} (commit {o.commit[:12]}, {o.download} download, "
                         f"{len(o.files)} files)\n      at {m.path}")
            return (f"  {tag}: {where}\n      layout {m.layout}, hidden {m.hidden_size}, {m.num_layers} layers, "
                    f"Q/K rows {m.q_dim}/{m.k_dim}, vocab {m.vocab_size} ({m.dtype})"
                    f"{'' if m.form == 'safetensors' else f', read as {m.form}'}"
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
