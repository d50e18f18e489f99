"""The layout machinery: how an architecture's tensors map to E, Wq_l and Wk_l.

A :class:`Layout` describes one architecture family by exact tensor-name templates (never
substrings): where the input embedding lives, the per-layer stack prefix, and how each
layer's query and key projections are obtained, either from separate tensors or by splitting a
fused QKV tensor with a rule (contiguous blocks, interleaved per head, grouped per KV head).
:meth:`Layout.resolve` binds a layout to one checkpoint (finding the language-model prefix of
wrapped multimodal checkpoints, the layer count, the projection sizes) and returns a
:class:`ResolvedLayout` that reads one layer at a time.

All projections are returned in the PyTorch ``Linear`` layout ``[out_features, hidden]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from awm_jax.checkpoint import Checkpoint
from awm_jax.errors import LayoutError, NumericalError

__all__ = [
    "Layout",
    "ResolvedLayout",
    "Projection",
    "Separate",
    "FusedSplit",
    "Dims",
    "config_value",
    "to_float32",
]

#: Language-model prefixes tried, in order, for wrapped (multimodal) checkpoints.
LM_PREFIXES = ("", "language_model.", "model.language_model.", "model.text_model.", "text_model.")
#: Suffixes that mark quantisation side tensors (never weights).
QUANT_SIDE_SUFFIXES = ("weight_scale", "weight_scale_inv", "absmax", "qweight", "qzeros", "scales", "g_idx",
                       "input_scale", "quant_map", "quant_state", "nested_absmax", "nested_quant_map")


def config_value(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """Returns the first of ``keys`` present in ``config`` (or its ``text_config``)."""
    for scope in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if not isinstance(scope, Mapping):
            continue
        for key in keys:
            if scope.get(key) is not None:
                return scope[key]
    return default


def to_float32(array: np.ndarray, where: str) -> np.ndarray:
    """Upcasts a floating weight to float32, refusing integer (quantised) data and NaN/Inf."""
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.kind != "V" and "float" not in array.dtype.name:
        raise LayoutError(
            f"{where}: stored as {array.dtype}, i.e. quantised; dequantise the checkpoint "
            "(or use its float release) before comparing"
        )
    out = np.asarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise NumericalError(f"{where}: {bad} NaN/Inf value(s); the weights are damaged: fetch them again")
    return out


@dataclasses.dataclass(frozen=True)
class Dims:
    """Attention sizes of one model, from its config.

    Attributes:
      hidden: residual width ``n``.
      heads: number of query heads.
      kv_heads: number of key/value heads (== heads for multi-head attention).
      head_dim: per-head width.
    """

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def k_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Mapping[str, Any], hidden: int) -> "Dims":
        heads = config_value(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
        if not heads:
            raise LayoutError("config.json gives no num_attention_heads; cannot split the fused QKV tensor")
        heads = int(heads)
        kv = config_value(config, "num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
        if kv is None and config_value(config, "multi_query", default=False):
            kv = 1
        kv = int(kv or heads)
        head_dim = int(config_value(config, "head_dim", "kv_channels", default=0) or hidden // heads)
        return cls(hidden=hidden, heads=heads, kv_heads=kv, head_dim=head_dim)


class Projection:
    """How to obtain one layer's query or key rows ``[d, hidden]`` from a checkpoint."""

    def tensor_names(self) -> tuple[str, ...]:
        """Templates (with ``{p}`` prefix and ``{i}`` layer) of the tensors this reads."""
        raise NotImplementedError

    def read(self, ckpt: Checkpoint, names: Sequence[str], dims: Dims) -> np.ndarray:
        """Reads the rows, given the tensor names resolved for one layer."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Separate(Projection):
    """A projection stored in its own tensor.

    Attributes:
      name: template, e.g. ``"{p}model.layers.{i}.self_attn.q_proj.weight"``.
      transposed: stored as ``[hidden, out]`` (GPT-2 ``Conv1D``) rather than ``[out, hidden]``.
    """

    name: str
    transposed: bool = False

    def tensor_names(self) -> tuple[str, ...]:
        return (self.name,)

    def read(self, ckpt: Checkpoint, names: Sequence[str], dims: Dims) -> np.ndarray:
        w = to_float32(ckpt.read(names[0]), f"{ckpt.root}: {names[0]}")
        return w.T if self.transposed else w


#: Split rules for fused QKV tensors, each mapping (dims, part) -> row indices.
def _blocks(dims: Dims, part: str) -> np.ndarray:
    # [Q (q_dim) | K (k_dim) | V (k_dim)] stacked contiguously.
    start = {"q": 0, "k": dims.q_dim}[part]
    size = {"q": dims.q_dim, "k": dims.k_dim}[part]
    return np.arange(start, start + size)


def _per_head(dims: Dims, part: str) -> np.ndarray:
    # [heads, 3, head_dim]: for each head its q, k and v rows in turn (GPT-NeoX, BLOOM).
    if dims.kv_heads != dims.heads:
        raise LayoutError("per-head interleaved QKV requires as many key heads as query heads")
    j = {"q": 0, "k": 1}[part]
    return (np.arange(dims.heads)[:, None] * 3 * dims.head_dim + j * dims.head_dim
            + np.arange(dims.head_dim)[None, :]).reshape(-1)


def _per_group(dims: Dims, part: str) -> np.ndarray:
    # [kv_heads, q_per_kv + 2, head_dim]: per KV group its q heads, then k, then v
    # (InternLM2 wqkv, Falcon new_decoder_architecture).
    if dims.heads % dims.kv_heads:
        raise LayoutError(f"{dims.heads} query heads do not divide into {dims.kv_heads} key/value groups")
    g = dims.heads // dims.kv_heads
    slots = np.arange(g) if part == "q" else np.array([g])
    rows = (np.arange(dims.kv_heads)[:, None, None] * (g + 2) * dims.head_dim
            + slots[None, :, None] * dims.head_dim + np.arange(dims.head_dim)[None, None, :])
    return rows.reshape(-1)


SPLIT_RULES: Mapping[str, Callable[[Dims, str], np.ndarray]] = {
    "blocks": _blocks,
    "per_head": _per_head,
    "per_group": _per_group,
}


@dataclasses.dataclass(frozen=True)
class FusedSplit(Projection):
    """One part (``"q"`` or ``"k"``) of a fused QKV tensor, split by a named rule.

    Attributes:
      name: template of the fused tensor.
      part: ``"q"`` or ``"k"``.
      rule: a key of ``SPLIT_RULES``: ``"blocks"``, ``"per_head"`` or ``"per_group"``.
      transposed: stored as ``[hidden, 3 * ...]`` (GPT-2 ``Conv1D``).
    """

    name: str
    part: str
    rule: str = "blocks"
    transposed: bool = False

    def tensor_names(self) -> tuple[str, ...]:
        return (self.name,)

    def read(self, ckpt: Checkpoint, names: Sequence[str], dims: Dims) -> np.ndarray:
        raw = ckpt.read(names[0])
        fused = raw.T if self.transposed else raw
        rows = SPLIT_RULES[self.rule](dims, self.part)
        expected = dims.q_dim + 2 * dims.k_dim
        if fused.ndim != 2 or fused.shape[0] != expected or fused.shape[1] != dims.hidden:
            raise LayoutError(
                f"{ckpt.root}: {names[0]} has shape {tuple(raw.shape)}, but the config implies "
                f"{expected} fused rows x {dims.hidden} (heads {dims.heads}, kv heads {dims.kv_heads}, "
                f"head_dim {dims.head_dim}); the config contradicts the tensors"
            )
        return to_float32(fused[rows], f"{ckpt.root}: {names[0]}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """An architecture family's tensor layout.

    Attributes:
      name: registry name (``"llama"``, ``"gpt2"``...).
      architectures: ``config.json`` ``architectures`` entries that select this layout.
      model_types: ``config.json`` ``model_type`` values that select it.
      embedding: candidate templates of the input embedding ``[vocab, hidden]`` (first found).
      query: how to get ``Wq_l``.
      key: how to get ``Wk_l``.
      hidden_keys: config keys of the hidden size.
      layers_keys: config keys of the number of layers.
    """

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    embedding: tuple[str, ...]
    query: Projection
    key: Projection
    hidden_keys: tuple[str, ...] = ("hidden_size", "n_embd", "d_model", "dim")
    layers_keys: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

    def marker(self) -> str:
        """The layer-0 query tensor template, used to recognise the layout from tensor names."""
        return self.query.tensor_names()[0]

    def _names(self, projection: Projection, prefix: str, layer: int) -> list[str]:
        return [t.format(p=prefix, i=layer) for t in projection.tensor_names()]

    def find_prefix(self, ckpt: Checkpoint) -> str | None:
        """Returns the language-model prefix under which this layout's tensors exist, if any."""
        for prefix in LM_PREFIXES:
            if all(n in ckpt for n in self._names(self.query, prefix, 0)) and any(
                t.format(p=prefix) in ckpt for t in self.embedding
            ):
                return prefix
        return None

    def resolve(self, ckpt: Checkpoint) -> "ResolvedLayout":
        """Binds this layout to a checkpoint; checks the config against the tensors."""
        prefix = self.find_prefix(ckpt)
        if prefix is None:
            raise LayoutError(f"{ckpt.root}: tensors do not follow the {self.name!r} layout")
        embedding = next(t.format(p=prefix) for t in self.embedding if t.format(p=prefix) in ckpt)
        e_info = ckpt.info(embedding)
        if len(e_info.shape) != 2 or 0 in e_info.shape:
            raise LayoutError(f"{ckpt.root}: embedding {embedding} has shape {e_info.shape}, expected [vocab, hidden]")
        hidden = e_info.shape[1]
        cfg_hidden = config_value(ckpt.config, *self.hidden_keys)
        if cfg_hidden is not None and int(cfg_hidden) != hidden:
            raise LayoutError(
                f"{ckpt.root}: config.json says hidden size {cfg_hidden} but {embedding} has {hidden} "
                "columns; the config contradicts the tensors: fix config.json"
            )
        # Layers present: consecutive indices from 0 whose projections all exist.
        found = 0
        while all(n in ckpt for proj in (self.query, self.key) for n in self._names(proj, prefix, found)):
            found += 1
        declared = config_value(ckpt.config, *self.layers_keys)
        if declared is not None and int(declared) != found:
            raise LayoutError(
                f"{ckpt.root}: config.json declares {declared} layers but the tensors hold {found} complete "
                f"layers of {self.marker().format(p=prefix, i='N')}; a shard is missing or the config is wrong"
            )
        if found == 0:
            raise LayoutError(f"{ckpt.root}: no decoder layers found ({self.marker().format(p=prefix, i=0)} missing)")
        dims = Dims.from_config(ckpt.config, hidden) if ckpt.config else None
        resolved = ResolvedLayout(self, ckpt, prefix, embedding, hidden, found, dims)
        q, k = resolved.read_qk(0)
        resolved = dataclasses.replace(resolved, q_dim=q.shape[0], k_dim=k.shape[0])
        return resolved


@dataclasses.dataclass(frozen=True)
class ResolvedLayout:
    """A layout bound to one checkpoint: reads its embedding and one layer's Q/K at a time.

    Attributes:
      layout: the family layout.
      ckpt: the checkpoint.
      prefix: language-model prefix (``""`` for plain causal-LM checkpoints).
      embedding_name: the input-embedding tensor.
      hidden_size: residual width ``n``.
      num_layers: number of decoder layers.
      dims: attention sizes from the config (``None`` without a config).
      q_dim: rows of ``Wq`` (set after resolving).
      k_dim: rows of ``Wk``.
    """

    layout: Layout
    ckpt: Checkpoint
    prefix: str
    embedding_name: str
    hidden_size: int
    num_layers: int
    dims: Dims | None
    q_dim: int = 0
    k_dim: int = 0

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def vocab_rows(self) -> int:
        return self.ckpt.info(self.embedding_name).shape[0]

    def tensor_names(self, layer: int) -> list[str]:
        """The names of the tensors read for ``layer``."""
        return [n for proj in (self.layout.query, self.layout.key) for n in self.layout._names(proj, self.prefix, layer)]

    def read_embedding(self, rows: slice | None = None) -> np.ndarray:
        """Reads the input embedding (or a block of rows) in its stored dtype, ``[rows, n]``."""
        return self.ckpt.read(self.embedding_name, rows)

    def read_qk(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Reads layer ``layer``'s query and key projections as float32 ``[d_q, n]``, ``[d_k, n]``."""
        dims = self.dims or Dims(self.hidden_size, 1, 1, self.hidden_size)
        out = []
        for proj in (self.layout.query, self.layout.key):
            w = proj.read(self.ckpt, self.layout._names(proj, self.prefix, layer), dims)
            if w.ndim != 2 or w.shape[1] != self.hidden_size:
                raise LayoutError(
                    f"{self.ckpt.root}: layer {layer} projection has shape {w.shape}, expected [rows, "
                    f"{self.hidden_size}]; the checkpoint does not follow the {self.name!r} layout"
                )
            out.append(w)
        q, k = out
        if (self.q_dim and q.shape[0] != self.q_dim) or (self.k_dim and k.shape[0] != self.k_dim):
            raise LayoutError(
                f"{self.ckpt.root}: layer {layer} has Q/K of {q.shape[0]}/{k.shape[0]} rows but layer 0 "
                f"has {self.q_dim}/{self.k_dim}; layers of different widths are not supported"
            )
        return q, k


def layer_template_regex(template: str) -> re.Pattern:
    """A regex matching a ``{p}``/``{i}`` template exactly (used by detection diagnostics)."""
    parts = re.split(r"(\{p\}|\{i\})", template)
    rx = "".join({"{p}": r"(?P<p>.*?)", "{i}": r"(?P<i>\d+)"}.get(s, re.escape(s)) for s in parts)
    return re.compile(rf"^{rx}$")


