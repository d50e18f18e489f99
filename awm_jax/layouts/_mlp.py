"""MLP input matrices: the gate/up (or fc1) rows of one layer, dense or mixture-of-experts.

An MLP spec names its tensors by exact templates (``{p}`` prefix, ``{i}`` layer, ``{e}`` expert)
and returns :class:`MLPInput` records, each the input-side matrices of one feed-forward block in
the ``Linear`` layout ``[d_ff, hidden]``:

* :class:`GatedMLP`: separate gate and up projections (Llama ``gate_proj``/``up_proj``,
  Mixtral ``w1``/``w3``, InternLM2 ``w1``/``w3``, Qwen-1 ``w2``/``w1``);
* :class:`FusedGatedMLP`: one ``[2 d_ff, hidden]`` tensor whose first half is the gate and
  second half the up projection (Phi-3 and GLM ``gate_up_proj``, ChatGLM ``dense_h_to_4h``);
* :class:`PlainMLP`: one input matrix, no gate (GPT-2 ``c_fc``, OPT ``fc1``, GPT-NeoX
  ``dense_h_to_4h``);
* :class:`Experts`: one gated (or plain) MLP per routed expert, plus shared experts.

A layout lists candidate specs; for each layer the first whose tensors all exist is used, so a
model whose first layers are dense and the rest mixture-of-experts (DeepSeek) reads both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from awm_jax.layouts._dims import config_value
from awm_jax.layouts._quant import WeightReader

__all__ = ["MLPInput", "MLPSpec", "GatedMLP", "FusedGatedMLP", "PlainMLP", "Experts"]


@dataclasses.dataclass(frozen=True)
class MLPInput:
    """The input-side matrices of one feed-forward block.

    Attributes:
      name: ``"mlp"``, ``"expert 3"``, ``"shared expert"``...
      up: the up projection (or the single input matrix ``fc1`` of an ungated MLP), ``[d_ff, n]``.
      gate: the gate projection ``[d_ff, n]``, ``None`` for an ungated MLP.
    """

    name: str
    up: np.ndarray
    gate: np.ndarray | None = None


class MLPSpec:
    """How one layer's MLP input matrices are stored."""

    def templates(self) -> tuple[str, ...]:
        """Templates that must all exist for this spec to apply (``{e}`` as expert 0)."""
        raise NotImplementedError

    def present(self, reader: WeightReader, prefix: str, layer: int) -> bool:
        """Whether this spec's tensors exist for ``layer``."""
        return all(reader.has_weight(t.format(p=prefix, i=layer, e=0)) for t in self.templates())

    def read(self, reader: WeightReader, prefix: str, layer: int, config: Mapping[str, Any],
             expert: int = 0) -> list[MLPInput]:
        """Reads the layer's MLP input matrices.

        Args:
          reader: the checkpoint's weight reader.
          prefix: the language-model prefix (``{p}``).
          layer: the layer (``{i}``).
          config: the ``config.json`` dict.
          expert: the expert (``{e}``) when this spec is one expert of :class:`Experts`.

        Returns:
          One :class:`MLPInput` per feed-forward block, matrices ``[d_ff, n]`` float32.
        """
        raise NotImplementedError


def _read(reader: WeightReader, template: str, prefix: str, layer: int, expert: int, transposed: bool) -> np.ndarray:
    w = reader.matrix(template.format(p=prefix, i=layer, e=expert))
    return np.ascontiguousarray(w.T) if transposed else w


@dataclasses.dataclass(frozen=True)
class GatedMLP(MLPSpec):
    """Separate gate and up projections.

    Attributes:
      gate: template of the gate projection (the one passed through the activation).
      up: template of the up projection.
      name: record name.
    """

    gate: str
    up: str
    name: str = "mlp"

    def templates(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def read(self, reader: WeightReader, prefix: str, layer: int, config: Mapping[str, Any],
             expert: int = 0) -> list[MLPInput]:
        gate = _read(reader, self.gate, prefix, layer, expert, False)
        up = _read(reader, self.up, prefix, layer, expert, False)
        return [MLPInput(self.name, up=up, gate=gate)]


@dataclasses.dataclass(frozen=True)
class FusedGatedMLP(MLPSpec):
    """Gate and up stacked in one ``[2 d_ff, hidden]`` tensor, gate first (``chunk(2)``).

    Attributes:
      fused: template of the fused tensor.
      name: record name.
    """

    fused: str
    name: str = "mlp"

    def templates(self) -> tuple[str, ...]:
        return (self.fused,)

    def read(self, reader: WeightReader, prefix: str, layer: int, config: Mapping[str, Any],
             expert: int = 0) -> list[MLPInput]:
        w = _read(reader, self.fused, prefix, layer, expert, False)
        half = w.shape[0] // 2
        return [MLPInput(self.name, up=np.ascontiguousarray(w[half:]), gate=np.ascontiguousarray(w[:half]))]


@dataclasses.dataclass(frozen=True)
class PlainMLP(MLPSpec):
    """One input matrix and no gate.

    Attributes:
      fc1: template of the input matrix.
      transposed: stored as ``[hidden, d_ff]`` (GPT-2 ``Conv1D``).
      name: record name.
    """

    fc1: str
    transposed: bool = False
    name: str = "mlp"

    def templates(self) -> tuple[str, ...]:
        return (self.fc1,)

    def read(self, reader: WeightReader, prefix: str, layer: int, config: Mapping[str, Any],
             expert: int = 0) -> list[MLPInput]:
        return [MLPInput(self.name, up=_read(reader, self.fc1, prefix, layer, expert, self.transposed))]


@dataclasses.dataclass(frozen=True)
class Experts(MLPSpec):
    """A mixture-of-experts block: routed experts (``{e}`` in the templates) plus shared ones.

    Attributes:
      expert: the spec of one routed expert, its templates containing ``{e}``.
      shared: specs of always-active shared experts (Qwen2-MoE ``shared_expert``, DeepSeek
        ``shared_experts``), read after the routed ones.
      count_keys: config keys of the number of routed experts; without them the experts are
        counted from the tensors (consecutive indices from 0).
    """

    expert: GatedMLP | FusedGatedMLP | PlainMLP
    shared: Sequence[GatedMLP | FusedGatedMLP | PlainMLP] = ()
    count_keys: tuple[str, ...] = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")

    def templates(self) -> tuple[str, ...]:
        return self.expert.templates()

    def _count(self, reader: WeightReader, prefix: str, layer: int, config: Mapping[str, Any]) -> int:
        declared = config_value(config, *self.count_keys)
        if declared is not None:
            return int(declared)
        n = 0
        while all(reader.has_weight(t.format(p=prefix, i=layer, e=n)) for t in self.expert.templates()):
            n += 1
        return n

    def read(self, reader: WeightReader, prefix: str, layer: int, config: Mapping[str, Any],
             expert: int = 0) -> list[MLPInput]:
        out: list[MLPInput] = []
        for e in range(self._count(reader, prefix, layer, config)):
            (rec,) = self.expert.read(reader, prefix, layer, config, expert=e)
            out.append(dataclasses.replace(rec, name=f"expert {e}"))
        for spec in self.shared:
            if spec.present(reader, prefix, layer):
                out.extend(spec.read(reader, prefix, layer, config))
        return out
