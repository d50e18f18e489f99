"""Phi-3 / Phi-4: fused ``qkv_proj`` as contiguous ``[Q | K | V]`` blocks, fused ``gate_up_proj``.

``qkv_proj`` has ``num_attention_heads * head_dim`` query rows followed by
``num_key_value_heads * head_dim`` key and as many value rows (grouped-query attention in
Phi-3-medium, Phi-4 and Phi-4-mini); the split sizes come from the config.

Pre-norm RMSNorms: ``input_layernorm`` before the attention, ``post_attention_layernorm`` before
the MLP (gains folded).
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import FusedGatedMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["PHI3"]

_QKV = "{p}layers.{i}.self_attn.qkv_proj.weight"

PHI3 = Layout(
    name="phi3",
    architectures=("Phi3ForCausalLM", "Phi3Model"),
    model_types=("phi3",),
    embedding=("{p}embed_tokens.weight",),
    query=FusedSplit(_QKV, "q", "blocks"),
    key=FusedSplit(_QKV, "k", "blocks"),
    mlp=(FusedGatedMLP("{p}layers.{i}.mlp.gate_up_proj.weight"),),
    norms=NormGains(("{p}layers.{i}.input_layernorm.weight",), ("{p}layers.{i}.post_attention_layernorm.weight",)),
)
