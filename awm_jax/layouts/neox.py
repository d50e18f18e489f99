"""``query_key_value`` families: GPT-NeoX/Pythia, BLOOM and Falcon.

All three fuse Q, K and V in one ``Linear`` ``query_key_value`` whose rows are *not* three
contiguous blocks:

* GPT-NeoX/Pythia and BLOOM: interleaved per head, ``[heads, 3, head_dim]``
  (``qkv.view(..., heads, 3 * head_dim).chunk(3)``; BLOOM ``view(..., heads, 3, head_dim)``).
* Falcon (the rule depends on the config):
  ``new_decoder_architecture`` (Falcon-40B/180B, ``model_type`` ``RefinedWeb``): grouped per
  key/value head, ``[kv_heads, heads/kv_heads + 2, head_dim]``; ``multi_query`` (Falcon-7B):
  ``[heads + 2, head_dim]``, i.e. all query heads then one key and one value head;
  neither (Falcon-RW): per head like BLOOM. Falcon's ``head_dim`` is ``hidden / heads``.

BLOOM and Falcon share tensor names (``transformer.h.{i}.self_attention.query_key_value``),
so the config decides between them; checkpoints saved from the bare base model drop the
``transformer.``/``gpt_neox.`` prefix.

Pre-norm LayerNorm gains (folded): GPT-NeoX and BLOOM ``input_layernorm`` before the attention
and ``post_attention_layernorm`` before the MLP (also with GPT-NeoX's parallel residual, where
each reads its own norm of the same input); Falcon ``ln_attn``/``ln_mlp`` (new architecture with
two norms), else ``input_layernorm``, read by the MLP too when the blocks are parallel (no
``post_attention_layernorm``, Falcon-7B). BLOOM's ``word_embeddings_layernorm`` normalises the
embedding itself before the first layer; it is not a gain in front of a projection and is left
as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims, config_value
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["GPT_NEOX", "BLOOM", "FALCON", "falcon_dims"]


def _per_head_dims(config: Mapping[str, Any], hidden: int) -> Dims:
    base = Dims.from_config(config, hidden)
    return Dims(hidden, base.heads, base.heads, base.head_dim, fused_rule="per_head")


def falcon_dims(config: Mapping[str, Any], hidden: int) -> Dims:
    """Falcon's split: grouped (new architecture), multi-query, or per head (Falcon-RW)."""
    heads = int(config_value(config, "num_attention_heads", "n_head", default=0) or 0)
    if not heads:
        base = Dims.from_config(config, hidden)  # raises the "no num_attention_heads" error
        heads = base.heads
    head_dim = hidden // heads
    new_arch = bool(config_value(config, "new_decoder_architecture", default=False)) or (
        config_value(config, "model_type") == "RefinedWeb")
    if new_arch:
        kv = int(config_value(config, "num_kv_heads", "n_head_kv", default=0) or heads)
        return Dims(hidden, heads, kv, head_dim, fused_rule="per_group")
    if config_value(config, "multi_query", default=True):
        return Dims(hidden, heads, 1, head_dim, fused_rule="per_group")
    return Dims(hidden, heads, heads, head_dim, fused_rule="per_head")


_NEOX_QKV = "{p}layers.{i}.attention.query_key_value.weight"
GPT_NEOX = Layout(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM", "GPTNeoXModel"),
    model_types=("gpt_neox",),
    embedding=("{p}embed_in.weight",),
    query=FusedSplit(_NEOX_QKV, "q", "per_head"),
    key=FusedSplit(_NEOX_QKV, "k", "per_head"),
    bases=("gpt_neox.", ""),
    mlp=(PlainMLP("{p}layers.{i}.mlp.dense_h_to_4h.weight"),),
    dims=_per_head_dims,
    norms=NormGains(("{p}layers.{i}.input_layernorm.weight",), ("{p}layers.{i}.post_attention_layernorm.weight",)),
)

_H_QKV = "{p}h.{i}.self_attention.query_key_value.weight"
BLOOM = Layout(
    name="bloom",
    architectures=("BloomForCausalLM", "BloomModel"),
    model_types=("bloom",),
    embedding=("{p}word_embeddings.weight",),
    query=FusedSplit(_H_QKV, "q", "per_head"),
    key=FusedSplit(_H_QKV, "k", "per_head"),
    bases=("transformer.", ""),
    mlp=(PlainMLP("{p}h.{i}.mlp.dense_h_to_4h.weight"),),
    dims=_per_head_dims,
    norms=NormGains(("{p}h.{i}.input_layernorm.weight",), ("{p}h.{i}.post_attention_layernorm.weight",)),
)

FALCON = Layout(
    name="falcon",
    architectures=("FalconForCausalLM", "FalconModel", "RWForCausalLM"),
    model_types=("falcon", "RefinedWeb", "RefinedWebModel"),
    embedding=("{p}word_embeddings.weight",),
    query=FusedSplit(_H_QKV, "q", "config"),
    key=FusedSplit(_H_QKV, "k", "config"),
    bases=("transformer.", ""),
    mlp=(PlainMLP("{p}h.{i}.mlp.dense_h_to_4h.weight"),),
    dims=falcon_dims,
    norms=NormGains(("{p}h.{i}.ln_attn.weight", "{p}h.{i}.input_layernorm.weight"),
                    ("{p}h.{i}.ln_mlp.weight", "{p}h.{i}.post_attention_layernorm.weight",
                     "{p}h.{i}.input_layernorm.weight")),
)
