"""The layout machinery: how an architecture's tensors map to E, Wq_l and Wk_l.

A :class:`Layout` describes one architecture family by exact tensor-name templates (never
substrings). Templates are written relative to the language model: ``{p}`` stands for the
language-model prefix, ``{i}`` for the layer index. The prefix is a wrapper prefix from
:data:`LM_PREFIXES` (``""`` for a plain causal LM, ``"language_model."`` for LLaVA-style
checkpoints, ``"model.language_model."`` for Qwen2-VL/Gemma-3...) followed by one of the
layout's base-model prefixes (``"model."`` for a ``*ForCausalLM`` checkpoint, ``""`` for one
saved from the bare base model). Vision and audio towers, multi-token-prediction modules and
second stacks live under other names, so they can never be taken for language-model layers.

:meth:`Layout.resolve` binds a layout to one checkpoint (language-model prefix, layer count,
attention sizes) and returns a :class:`ResolvedLayout` that reads one layer at a time. All
projections are float32 in the PyTorch ``Linear`` layout ``[out_features, hidden]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.errors import LayoutError
from awm_jax.layouts._dims import Dims, MalformedConfig, config_value
from awm_jax.layouts._mlp import MLPInput, MLPSpec
from awm_jax.layouts._norms import NormGains, fold_gain
from awm_jax.layouts._projections import Projection
from awm_jax.layouts._quant import WeightReader, to_float32

__all__ = [
    "Layout",
    "ResolvedLayout",
    "LM_PREFIXES",
    "MTP_KEYS",
]

#: Wrapper prefixes of the language model, tried in order: plain causal LMs, LLaVA-style and
#: Qwen2-Audio (``language_model.``), the newer transformers layout of Qwen2-VL/2.5-VL, Gemma-3,
#: LLaVA, Mistral-3 (``model.language_model.``), Idefics3/SmolVLM (``model.text_model.``),
#: MiniCPM-V/Ovis (``llm.``), Qwen2.5-Omni's thinker (``thinker.``).
LM_PREFIXES = ("", "language_model.", "model.language_model.", "model.text_model.", "text_model.", "llm.",
               "thinker.")

#: Config keys giving the number of multi-token-prediction layers stored after the decoder layers.
MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers")

DimsFn = Callable[[Mapping[str, Any], int], Dims]


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
      bases: base-model prefixes inside the language model (``"model."`` and ``""`` for a
        checkpoint saved from the bare base model).
      mlp: candidate MLP specs, the first present one applies per layer.
      markers: templates that identify the layout and a complete layer (default: the Q/K tensors).
      dims: attention sizes from ``(config, hidden)`` (default :meth:`Dims.from_config`).
      embedding_projection: template of a ``[hidden, d_embed]`` matrix applied after the
        embedding (OPT-350m ``project_in``); the embedding read is then ``E @ P^T``.
      hidden_keys: config keys of the hidden size.
      layers_keys: config keys of the number of layers.
      norms: where each layer's pre-attention and pre-MLP normalisation gains are
        (:class:`NormGains`); ``None`` when no per-dimension gain sits in front of the attention
        (post-norm or parameter-free norms: docs/layouts.md says which, per layout).
      source: where the layout was checked: ``"transformers"`` (captured from its modules),
        ``"documented"`` (the published modelling code, for families transformers does not ship)
        or ``"layout file"`` (a user's TOML description).
      prefixes: wrapper prefixes tried before the base prefixes (:data:`LM_PREFIXES`; a layout
        file's single ``prefix``).
    """

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    embedding: tuple[str, ...]
    query: Projection
    key: Projection
    bases: tuple[str, ...] = ("model.", "")
    mlp: tuple[MLPSpec, ...] = ()
    markers: tuple[str, ...] = ()
    dims: DimsFn | None = None
    embedding_projection: str | None = None
    hidden_keys: tuple[str, ...] = ("hidden_size", "n_embd", "d_model", "dim")
    layers_keys: tuple[str, ...] = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    source: str = "transformers"
    prefixes: tuple[str, ...] = LM_PREFIXES
    norms: NormGains | None = None

    def layer_markers(self) -> tuple[str, ...]:
        """Templates whose presence marks a complete layer (and identifies the layout)."""
        return self.markers or (self.query.tensor_names() + self.key.tensor_names())

    def marker(self) -> str:
        """The first layer-0 marker template, for messages."""
        return self.layer_markers()[0]

    def candidate_prefixes(self) -> list[str]:
        """Every language-model prefix tried: wrapper prefixes times base-model prefixes."""
        return list(dict.fromkeys(w + b for w in self.prefixes for b in self.bases))

    def _layer_present(self, reader: WeightReader, prefix: str, layer: int) -> bool:
        return all(reader.has_weight(t.format(p=prefix, i=layer)) for t in self.layer_markers())

    def matching_prefixes(self, ckpt: Checkpoint) -> list[str]:
        """Prefixes under which both an embedding and a complete layer 0 of this layout exist."""
        reader = WeightReader(ckpt)
        return [
            p for p in self.candidate_prefixes()
            if self._layer_present(reader, p, 0) and any(t.format(p=p) in ckpt for t in self.embedding)
        ]

    def find_prefix(self, ckpt: Checkpoint) -> str | None:
        """Returns the language-model prefix under which this layout's tensors exist, if any.

        Raises:
          LayoutError: two different stacks both fit (the checkpoint holds two language models).
        """
        found = self.matching_prefixes(ckpt)
        if len(found) > 1:
            shown = ", ".join(repr(self.marker().format(p=p, i=0)) for p in found)
            raise LayoutError(
                f"{ckpt.root}: holds {len(found)} {self.name!r} stacks ({shown}); awm_jax cannot tell which is the "
                "language model: describe it in a layout file with an explicit prefix (docs/layouts.md)"
            )
        return found[0] if found else None

    def resolve(self, ckpt: Checkpoint) -> ResolvedLayout:
        """Binds this layout to a checkpoint; checks the config against the tensors.

        Only headers are consulted: no weight data is read (a warm, cached comparison reads none).

        Raises:
          LayoutError: the tensors do not follow this layout, or contradict the config.
        """
        prefix = self.find_prefix(ckpt)
        if prefix is None:
            base = self.bases[0]
            wrappers = [repr(w) for w in self.prefixes if w]
            raise LayoutError(
                f"{ckpt.root}: tensors do not follow the {self.name!r} layout: no "
                f"{self.marker().format(p=base, i=0)!r} with an embedding {self.embedding[0].format(p=base)!r}"
                + (f", also looked for under the prefixes {', '.join(wrappers)}" if wrappers else "")
                + (f" and without {base!r}" if base and len(self.bases) > 1 else "")
            )
        reader = WeightReader(ckpt)
        embedding = next(t.format(p=prefix) for t in self.embedding if t.format(p=prefix) in ckpt)
        e_info = ckpt.info(embedding)
        if len(e_info.shape) != 2 or 0 in e_info.shape:
            raise LayoutError(f"{ckpt.root}: embedding {embedding} has shape {e_info.shape}, expected [vocab, hidden]")
        hidden = e_info.shape[1]
        projection = None
        if self.embedding_projection is not None:
            name = self.embedding_projection.format(p=prefix)
            if name in ckpt:
                projection = name
                p_shape = ckpt.info(name).shape
                if len(p_shape) != 2 or p_shape[1] != hidden:
                    raise LayoutError(
                        f"{ckpt.root}: {name} has shape {p_shape}, expected [hidden, {hidden}] to follow {embedding}"
                    )
                hidden = p_shape[0]
        cfg_hidden = config_value(ckpt.config, *self.hidden_keys)
        if cfg_hidden is not None and int(cfg_hidden) != hidden:
            raise LayoutError(
                f"{ckpt.root}: config.json says hidden size {cfg_hidden} but {embedding} has {hidden} "
                "columns; the config contradicts the tensors: fix config.json"
            )
        num_layers = self._count_layers(ckpt, reader, prefix)
        try:
            dims = (self.dims or Dims.from_config)(ckpt.config, hidden)
        except MalformedConfig as e:
            raise LayoutError(f"{ckpt.root}/{e}") from None
        except LayoutError:
            dims = None  # separate projections need no head counts; fused and MLA ones say so when read
        rows = []
        for proj in (self.query, self.key):
            names = [t.format(p=prefix, i=0) for t in proj.tensor_names(dims)]
            rows.append(proj.rows(reader, names, dims, hidden))
        attention_gain, mlp_gain = self.norms.bind(reader, prefix, hidden) if self.norms is not None else (None, None)
        return ResolvedLayout(self, ckpt, prefix, embedding, hidden, num_layers, dims, q_dim=rows[0], k_dim=rows[1],
                              embedding_projection=projection, reader=reader, attention_gain=attention_gain,
                              mlp_gain=mlp_gain)

    def _count_layers(self, ckpt: Checkpoint, reader: WeightReader, prefix: str) -> int:
        """Decoder layers: the config's count, all present; extra layers only as declared MTP layers."""
        found = 0
        while self._layer_present(reader, prefix, found):
            found += 1
        marker = self.marker().format(p=prefix, i="N")
        declared = config_value(ckpt.config, *self.layers_keys)
        if declared is None:
            if found == 0:
                raise LayoutError(f"{ckpt.root}: no decoder layers found ({marker} with N = 0 is missing)")
            return found
        declared = int(declared)
        if found < declared:
            raise LayoutError(
                f"{ckpt.root}: config.json declares {declared} layers but only layers 0-{found - 1} of {marker} "
                f"are complete (layer {found} is missing); a shard is missing or the config is wrong"
            )
        extra = found - declared
        mtp = int(config_value(ckpt.config, *MTP_KEYS, default=0) or 0)
        if extra > mtp:
            raise LayoutError(
                f"{ckpt.root}: config.json declares {declared} layers (and {mtp} multi-token-prediction layers) but "
                f"the tensors hold {found} layers of {marker}; fix num_hidden_layers in config.json"
            )
        return declared


@dataclasses.dataclass(frozen=True)
class ResolvedLayout:
    """A layout bound to one checkpoint: reads its embedding and one layer's Q/K at a time.

    Attributes:
      layout: the family layout.
      ckpt: the checkpoint.
      prefix: language-model prefix (``"model."`` for a plain ``*ForCausalLM`` checkpoint).
      embedding_name: the input-embedding tensor.
      hidden_size: residual width ``n``.
      num_layers: number of decoder layers (multi-token-prediction layers excluded).
      dims: attention sizes from the config (``None`` when it gives no head counts).
      q_dim: rows of ``Wq`` (set after resolving).
      k_dim: rows of ``Wk``.
      embedding_projection: tensor applied after the embedding (OPT ``project_in``), if any.
      reader: the dequantising weight reader.
      attention_gain: template of the gain of the norm ``Wq``/``Wk`` read (``None``: none).
      mlp_gain: template of the gain of the norm the MLP inputs read (``None``: none).
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
    embedding_projection: str | None = None
    reader: WeightReader | None = None
    attention_gain: str | None = None
    mlp_gain: str | None = None

    @property
    def name(self) -> str:
        """The layout's registry name (or the layout file's ``name``)."""
        return self.layout.name

    @property
    def vocab_rows(self) -> int:
        """Rows of the input embedding (the vocabulary size it was trained with, padding included)."""
        return self.ckpt.info(self.embedding_name).shape[0]

    def _reader(self) -> WeightReader:
        return self.reader or WeightReader(self.ckpt)

    def _names(self, projection: Projection, layer: int) -> list[str]:
        return [t.format(p=self.prefix, i=layer) for t in projection.tensor_names(self.dims)]

    def tensor_names(self, layer: int) -> list[str]:
        """The names of the tensors read for ``layer``'s query and key."""
        return [n for proj in (self.layout.query, self.layout.key) for n in self._names(proj, layer)]

    def read_embedding(self, rows: slice | None = None, mapped: bool = False) -> np.ndarray:
        """Reads the input embedding (or a block of rows), ``[rows, n]``.

        Returns the stored dtype, except for models with an embedding projection (OPT-350m),
        whose effective embedding ``E @ P^T`` is returned as float32. ``mapped`` returns the
        whole stored tensor as a read-only memory map (:meth:`Checkpoint.map`) where there is
        no projection to apply.
        """
        if mapped and rows is None and self.embedding_projection is None:
            return self.ckpt.map(self.embedding_name)
        emb = self.ckpt.read(self.embedding_name, rows)
        if self.embedding_projection is None:
            return emb
        where = f"{self.ckpt.root}: {self.embedding_name}"
        return to_float32(emb, where) @ self._reader().matrix(self.embedding_projection).T

    def gain(self, layer: int, which: str) -> np.ndarray | None:
        """Layer ``layer``'s normalisation gain ``[n]`` float32 in front of ``"attention"`` or
        ``"mlp"``, ``None`` when there is none (the layout's :class:`NormGains`)."""
        template = self.attention_gain if which == "attention" else self.mlp_gain
        if template is None:
            return None
        return self.layout.norms.read(self._reader(), template, self.prefix, layer)

    def fold_gains(self, layer: int, which: str, *matrices: np.ndarray) -> tuple[np.ndarray, ...]:
        """Folds layer ``layer``'s ``"attention"`` or ``"mlp"`` norm gain into matrices reading it.

        Args:
          layer: the decoder layer.
          which: ``"attention"`` (for :meth:`read_qk`'s matrices) or ``"mlp"`` (:meth:`read_mlp`'s).
          *matrices: ``[rows, n]`` float32 matrices that read the norm's output.

        Returns:
          ``W diag(g)`` for each ``W`` (``awm_jax.layouts._norms``); the matrices unchanged when
          the layout has no such gain.
        """
        gain = self.gain(layer, which)
        return matrices if gain is None else tuple(fold_gain(w, gain) for w in matrices)

    def read_qk(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Reads layer ``layer``'s query and key projections as float32 ``[d_q, n]``, ``[d_k, n]``
        as stored (:meth:`fold_gains` folds the pre-attention norm's gain into them).

        Raises:
          LayoutError: a tensor is missing, quantised in a refused format, or of the wrong shape.
        """
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.num_layers})")
        out = []
        reader = self._reader().scoped()  # a fused QKV tensor is read once for both Q and K
        for proj in (self.layout.query, self.layout.key):
            w = proj.read(reader, self._names(proj, layer), self.dims)
            if w.ndim != 2 or w.shape[1] != self.hidden_size:
                raise LayoutError(
                    f"{self.ckpt.root}: layer {layer} projection {self._names(proj, layer)[0]} gives shape {w.shape}, "
                    f"expected [rows, {self.hidden_size}]; the checkpoint does not follow the {self.name!r} layout"
                )
            out.append(w)
        q, k = out
        if (self.q_dim and q.shape[0] != self.q_dim) or (self.k_dim and k.shape[0] != self.k_dim):
            raise LayoutError(
                f"{self.ckpt.root}: layer {layer} has Q/K of {q.shape[0]}/{k.shape[0]} rows but layer 0 "
                f"has {self.q_dim}/{self.k_dim}; layers of different widths are not supported"
            )
        return q, k

    def read_mlp(self, layer: int) -> list[MLPInput]:
        """Reads layer ``layer``'s MLP input matrices (gate/up or fc1), one record per expert, as
        stored (:meth:`fold_gains` folds the pre-MLP norm's gain into them).

        Returns:
          A list of :class:`MLPInput`: one for a dense MLP; for a mixture of experts, the routed
          experts in index order, then the shared experts.

        Raises:
          LayoutError: the layout defines no MLP, or none of its MLP forms is present.
        """
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.num_layers})")
        reader = self._reader()
        for spec in self.layout.mlp:
            if spec.present(reader, self.prefix, layer):
                return spec.read(reader, self.prefix, layer, self.ckpt.config)
        expected = [t.format(p=self.prefix, i=layer, e=0) for s in self.layout.mlp for t in s.templates()]
        raise LayoutError(
            f"{self.ckpt.root}: layer {layer} has no MLP input matrices of the {self.name!r} layout (looked for "
            f"{', '.join(expected) or 'none defined'}); the checkpoint is incomplete or of another layout"
        )
