"""Projections: how one layer's query or key rows ``[d, n]`` are obtained from named tensors.

A projection names its tensors by exact templates (``{p}`` the language-model prefix, ``{i}``
the layer) and reads them through a :class:`~awm_jax.layouts._quant.WeightReader`, so quantised
storage is dequantised or refused in one place. Every projection returns float32 rows in the
PyTorch ``Linear`` layout ``[out_features, hidden]``.

Fused QKV tensors are split by one of the rules of :data:`SPLIT_RULES`:

``blocks``
    ``[Q (heads*hd) | K (kv*hd) | V (kv*hd)]`` contiguous (Phi-3 ``qkv_proj``, GPT-2 ``c_attn``,
    MPT ``Wqkv``, Baichuan ``W_pack``, Qwen-1 ``c_attn``, ChatGLM2/3/GLM-4 multi-query
    ``query_key_value``, GPT-BigCode multi-query ``c_attn``).
``per_head``
    ``[heads, 3, hd]``: each head's q, k, v rows in turn (GPT-NeoX/Pythia, BLOOM, Falcon-RW,
    multi-head GPT-BigCode, ChatGLM without multi-query).
``per_group``
    ``[kv, heads/kv + 2, hd]``: per key/value group its query heads, then its k, then its v
    (InternLM2 ``wqkv``, Falcon-40B/180B ``new_decoder_architecture``, Falcon-7B multi-query).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from awm_jax.errors import LayoutError
from awm_jax.layouts._dims import Dims
from awm_jax.layouts._quant import WeightReader

__all__ = ["Projection", "Separate", "FusedSplit", "SPLIT_RULES", "split_rows"]


class Projection:
    """How to obtain one layer's query or key rows ``[d, hidden]`` from a checkpoint."""

    def tensor_names(self, dims: Dims | None = None) -> tuple[str, ...]:
        """Templates (with ``{p}`` prefix and ``{i}`` layer) of the tensors this reads.

        Args:
          dims: the model's attention sizes; projections whose tensors depend on the config
            (DeepSeek MLA with or without a query LoRA) need them, others ignore them.
        """
        raise NotImplementedError

    def rows(self, reader: WeightReader, names: Sequence[str], dims: Dims | None, hidden: int) -> int:
        """The number of rows ``d`` :meth:`read` returns, from the tensor shapes alone (no data is read).

        Raises:
          LayoutError: a tensor is missing, quantised in a refused format, or of a shape that
            contradicts ``hidden`` or the config.
        """
        raise NotImplementedError

    def read(self, reader: WeightReader, names: Sequence[str], dims: Dims | None) -> np.ndarray:
        """Reads the rows ``[d, hidden]`` as float32, given the names resolved for one layer.

        Args:
          reader: the checkpoint's weight reader.
          names: the templates of :meth:`tensor_names`, resolved for one layer.
          dims: attention sizes, ``None`` when the config gives no head counts.
        """
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Separate(Projection):
    """A projection stored in its own tensor.

    Attributes:
      name: template, e.g. ``"{p}layers.{i}.self_attn.q_proj.weight"``.
      transposed: stored as ``[hidden, out]`` (GPT-2 ``Conv1D``) rather than ``[out, hidden]``.
    """

    name: str
    transposed: bool = False

    def tensor_names(self, dims: Dims | None = None) -> tuple[str, ...]:
        return (self.name,)

    def rows(self, reader: WeightReader, names: Sequence[str], dims: Dims | None, hidden: int) -> int:
        shape = reader.shape(names[0])
        if len(shape) != 2 or shape[0 if self.transposed else 1] != hidden:
            raise LayoutError(
                f"{reader.ckpt.root}: {names[0]} has shape {tuple(shape)}, expected "
                f"{'[hidden, out]' if self.transposed else '[out, hidden]'} with hidden = {hidden}; "
                "the checkpoint does not follow this layout"
            )
        return shape[1 if self.transposed else 0]

    def read(self, reader: WeightReader, names: Sequence[str], dims: Dims | None) -> np.ndarray:
        w = reader.matrix(names[0])
        return np.ascontiguousarray(w.T) if self.transposed else w


def _blocks(dims: Dims, part: str) -> np.ndarray:
    start = {"q": 0, "k": dims.q_dim, "v": dims.q_dim + dims.k_dim}[part]
    size = dims.q_dim if part == "q" else dims.k_dim
    return np.arange(start, start + size)


def _per_head(dims: Dims, part: str) -> np.ndarray:
    if dims.kv_heads != dims.heads:
        raise LayoutError(
            f"per-head interleaved QKV needs as many key/value heads as query heads, but the config gives "
            f"{dims.heads} query and {dims.kv_heads} key/value heads; fix config.json or the layout's split rule"
        )
    j = {"q": 0, "k": 1, "v": 2}[part]
    return (np.arange(dims.heads)[:, None] * 3 * dims.head_dim + j * dims.head_dim
            + np.arange(dims.head_dim)[None, :]).reshape(-1)


def _per_group(dims: Dims, part: str) -> np.ndarray:
    if dims.heads % dims.kv_heads:
        raise LayoutError(
            f"{dims.heads} query heads do not divide into {dims.kv_heads} key/value groups; fix config.json"
        )
    g = dims.heads // dims.kv_heads
    slots = {"q": np.arange(g), "k": np.array([g]), "v": np.array([g + 1])}[part]
    rows = (np.arange(dims.kv_heads)[:, None, None] * (g + 2) * dims.head_dim
            + slots[None, :, None] * dims.head_dim + np.arange(dims.head_dim)[None, None, :])
    return rows.reshape(-1)


#: Split rules for fused QKV tensors: ``(dims, part) -> row indices`` of part ``"q"``/``"k"``/``"v"``.
SPLIT_RULES: Mapping[str, Callable[[Dims, str], np.ndarray]] = {
    "blocks": _blocks,
    "per_head": _per_head,
    "per_group": _per_group,
}


def split_rows(rule: str, dims: Dims, part: str) -> np.ndarray:
    """Row indices of ``part`` (``"q"``, ``"k"`` or ``"v"``) in a fused QKV tensor.

    Args:
      rule: a key of :data:`SPLIT_RULES`, or ``"config"`` for the rule the config implies
        (``dims.fused_rule``).
      dims: attention sizes.
      part: which projection.

    Returns:
      int array of ``dims.q_dim`` (``"q"``) or ``dims.k_dim`` row indices into the fused rows.
    """
    name = dims.fused_rule if rule == "config" else rule
    if name not in SPLIT_RULES:
        raise LayoutError(f"unknown fused-QKV split rule {name!r}; use one of {', '.join(SPLIT_RULES)}")
    return SPLIT_RULES[name](dims, part)


@dataclasses.dataclass(frozen=True)
class FusedSplit(Projection):
    """One part (``"q"`` or ``"k"``) of a fused QKV tensor, split by a named rule.

    Attributes:
      name: template of the fused tensor, ``[q_dim + 2 k_dim, hidden]``.
      part: ``"q"`` or ``"k"``.
      rule: a key of :data:`SPLIT_RULES`, or ``"config"`` to take ``dims.fused_rule`` (families
        whose interleaving depends on config flags, e.g. Falcon).
      transposed: stored as ``[hidden, q_dim + 2 k_dim]`` (GPT-2 ``Conv1D``).
    """

    name: str
    part: str
    rule: str = "blocks"
    transposed: bool = False

    def tensor_names(self, dims: Dims | None = None) -> tuple[str, ...]:
        return (self.name,)

    def _check(self, reader: WeightReader, name: str, shape: tuple[int, ...], dims: Dims | None,
               hidden: int) -> Dims:
        if dims is None:
            raise LayoutError(
                f"{reader.ckpt.root}: splitting the fused {name} needs the head counts from config.json "
                "(num_attention_heads, num_key_value_heads), which are missing; add them, or give [dims] in a "
                "layout file (docs/layouts.md)"
            )
        fused = tuple(reversed(shape)) if self.transposed else tuple(shape)
        expected = dims.q_dim + 2 * dims.k_dim
        if len(fused) != 2 or fused != (expected, hidden):
            raise LayoutError(
                f"{reader.ckpt.root}: {name} has shape {tuple(shape)}, but the config implies "
                f"{expected} fused rows x {hidden} (heads {dims.heads}, kv heads {dims.kv_heads}, "
                f"head_dim {dims.head_dim}); the config contradicts the tensors: fix config.json"
            )
        return dims

    def rows(self, reader: WeightReader, names: Sequence[str], dims: Dims | None, hidden: int) -> int:
        dims = self._check(reader, names[0], reader.shape(names[0]), dims, hidden)
        return len(split_rows(self.rule, dims, self.part))

    def read(self, reader: WeightReader, names: Sequence[str], dims: Dims | None) -> np.ndarray:
        raw = reader.matrix(names[0])
        dims = self._check(reader, names[0], raw.shape, dims, dims.hidden if dims is not None else raw.shape[-1])
        fused = raw.T if self.transposed else raw
        return np.ascontiguousarray(fused[split_rows(self.rule, dims, self.part)])
