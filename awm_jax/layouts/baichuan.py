"""Baichuan / Baichuan2 (remote code): fused ``W_pack`` as contiguous ``[Q | K | V]`` blocks.

From the published ``modeling_baichuan.py``: ``proj = self.W_pack(x)`` followed by
``proj.unflatten(-1, (3, hidden_size))`` (Baichuan2) or ``proj.split([hidden] * 3)``
(Baichuan-7B/13B): three contiguous blocks of ``hidden_size`` rows, multi-head attention.

Pre-norm RMSNorms: ``input_layernorm`` before the attention, ``post_attention_layernorm`` before
the MLP (gains folded).
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import GatedMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["BAICHUAN"]

_QKV = "{p}layers.{i}.self_attn.W_pack.weight"

BAICHUAN = Layout(
    name="baichuan",
    architectures=("BaichuanForCausalLM", "BaiChuanForCausalLM"),
    model_types=("baichuan",),
    embedding=("{p}embed_tokens.weight",),
    query=FusedSplit(_QKV, "q", "blocks"),
    key=FusedSplit(_QKV, "k", "blocks"),
    mlp=(GatedMLP("{p}layers.{i}.mlp.gate_proj.weight", "{p}layers.{i}.mlp.up_proj.weight"),),
    norms=NormGains(("{p}layers.{i}.input_layernorm.weight",), ("{p}layers.{i}.post_attention_layernorm.weight",)),
    source="documented",
)
