"""The audit's records: its models, its cells (one :class:`~awm_jax.report.PairResult` each)
and the whole result."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from awm_jax.report import ModelInfo, PairResult

__all__ = ["AUDIT_FORMAT", "AuditModel", "AuditResult", "PairScore"]

#: Schema of ``AuditResult.to_dict`` (``audit.json``).
AUDIT_FORMAT = "awm_jax.audit/2"


@dataclasses.dataclass(frozen=True)
class AuditModel(ModelInfo):
    """One audited model: :class:`~awm_jax.report.ModelInfo`, its unique ``name`` in the
    matrices, and the content key of its Gram fingerprint (``fingerprint``)."""

    name: str
    fingerprint: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairScore(PairResult):
    """One cell of an audit: the engine's :class:`~awm_jax.report.PairResult` of the pair, and

    Attributes:
      a: name of model A (the row model).
      b: name of model B (the column model).
      error: why the pair could not be scored (empty when it was; the scores are then NaN and
        the verdict ``unscored``).
    """

    a: str
    b: str
    error: str = ""

    @classmethod
    def of(cls, a: str, b: str, result: PairResult, error: str = "") -> "PairScore":
        return cls(**result.pair_fields(), a=a, b=b, error=error)


@dataclasses.dataclass(frozen=True, eq=False)
class AuditResult:
    """Everything an audit found.

    Attributes:
      models: every model (the rows, then in ``against`` mode the columns).
      rows: names of the matrices' rows.
      columns: names of the columns (``rows`` again for a full audit).
      against: whether the rows were scored against the columns only (``N x M``).
      pairs: every pair, in row-major order.
      mean: ``[R, C]`` mean scores (NaN on the diagonal of a full audit and for unscored pairs).
      wq: ``[R, C]`` Q scores.
      wk: ``[R, C]`` K scores.
      z: ``[R, C]`` signed reference z-scores.
      p: ``[R, C]`` calibrated p-values (NaN where the pair has none).
      verdict: ``[R, C]`` verdicts (``"self"`` on the diagonal of a full audit).
      families: families of models (connected components of derived pairs), first-member order.
      family_rule: ``"fwer"``, ``"verdict"`` or a mean-score threshold (``lineage_tree``).
      options: the pair options every cell was scored with (``PairOptions`` as a dict).
      timings: seconds per stage and counters (``pairs``, ``resumed``...).
      environment: versions and devices.
    """

    models: tuple[AuditModel, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    against: bool
    pairs: tuple[PairScore, ...]
    mean: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    z: np.ndarray
    p: np.ndarray
    verdict: np.ndarray
    families: tuple[tuple[str, ...], ...]
    family_rule: str | float
    options: dict
    timings: dict
    environment: dict

    @property
    def layer_match(self) -> str:
        return self.options["layer_match"]

    def pair(self, a: str, b: str) -> PairScore:
        """The result of the pair of models named ``a`` and ``b`` (either order)."""
        for p in self.pairs:
            if (p.a, p.b) in ((a, b), (b, a)):
                return p
        raise KeyError(f"no audited pair {a!r} / {b!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of the results (no timings: identical for identical inputs)."""
        from awm_jax.audit.lineage_tree import describe_rule
        from awm_jax.numerics.statistics import VERDICT_RULE

        def matrix(m: np.ndarray) -> list:
            return [[None if not math.isfinite(v) else float(v) for v in row] for row in m.tolist()]

        return {
            "format": AUDIT_FORMAT,
            "options": dict(self.options),
            "models": [dataclasses.asdict(m) for m in self.models],
            "rows": list(self.rows),
            "columns": list(self.columns),
            "against": self.against,
            "verdict_rule": VERDICT_RULE,
            "family_rule": self.family_rule,
            "family_rule_text": describe_rule(self.family_rule, sum(1 for p in self.pairs if not p.error)),
            "families": [list(f) for f in self.families],
            "matrices": {
                "mean": matrix(self.mean), "wq": matrix(self.wq), "wk": matrix(self.wk), "z": matrix(self.z),
                "p": matrix(self.p), "verdict": self.verdict.tolist(),
            },
            "pairs": [p.to_dict() for p in self.pairs],
        }
