"""Persimmon and Fuyu: fused ``query_key_value`` interleaved per head, as BLOOM.

transformers' ``PersimmonAttention._split_heads`` views the fused projection's output as
``[heads, 3, head_dim]`` (``fused_qkv.view(batch, seq, num_heads, 3, head_dim)``), so each
head's query, key and value rows follow each other; ``head_dim`` is ``hidden / heads`` and
there are as many key/value heads as query heads. The query/key LayerNorms (``qk_layernorm``)
act on the projected heads and are not part of ``Wq``/``Wk``. The MLP is one ``dense_h_to_4h``.
The pre-attention (``input_layernorm``) and pre-MLP (``post_attention_layernorm``) LayerNorm
gains fold into the projections that read them.

Fuyu (``FuyuForCausalLM``) wraps a Persimmon language model: ``language_model.model.*`` in
older checkpoints, ``model.language_model.*`` in newer ones, beside the patch embedding
``vision_embed_tokens`` (no decoder layers of its own); the layout is chosen from its
``text_config`` (``model_type: persimmon``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["PERSIMMON"]

_QKV = "{p}layers.{i}.self_attn.query_key_value.weight"


def _dims(config: Mapping[str, Any], hidden: int) -> Dims:
    heads = Dims.from_config(config, hidden).heads
    return Dims(hidden, heads, heads, hidden // heads, fused_rule="per_head")


PERSIMMON = Layout(
    name="persimmon",
    architectures=("PersimmonForCausalLM", "PersimmonModel", "FuyuForCausalLM"),
    model_types=("persimmon", "fuyu"),
    embedding=("{p}embed_tokens.weight",),
    query=FusedSplit(_QKV, "q", "per_head"),
    key=FusedSplit(_QKV, "k", "per_head"),
    mlp=(PlainMLP("{p}layers.{i}.mlp.dense_h_to_4h.weight"),),
    # Pre-norm LayerNorms (gain and bias): the gain folds into the fused projection's input columns.
    norms=NormGains(("{p}layers.{i}.input_layernorm.weight",), ("{p}layers.{i}.post_attention_layernorm.weight",)),
    dims=_dims,
    source="documented",
)
