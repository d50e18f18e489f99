"""InternLM2 / InternLM2.5 (remote code): fused ``wqkv`` grouped per key/value head.

From the published ``modeling_internlm2.py``: ``rearrange(qkv, "b q (h gs d) -> b q h gs d",
gs=2 + num_key_value_groups)``; queries are ``[..., :num_key_value_groups, :]``, the key
``[..., -2, :]``, the value ``[..., -1, :]``. So the rows are
``[kv_heads, heads/kv_heads + 2, head_dim]``. The embedding is ``model.tok_embeddings``;
the MLP is ``w2(silu(w1(x)) * w3(x))`` (``w1`` gate, ``w3`` up).

Pre-norm RMSNorms: ``attention_norm`` before the attention, ``ffn_norm`` before the MLP (gains
folded).
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import GatedMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["INTERNLM2"]

_QKV = "{p}layers.{i}.attention.wqkv.weight"

INTERNLM2 = Layout(
    name="internlm2",
    architectures=("InternLM2ForCausalLM", "InternLM2Model"),
    model_types=("internlm2",),
    embedding=("{p}tok_embeddings.weight",),
    query=FusedSplit(_QKV, "q", "per_group"),
    key=FusedSplit(_QKV, "k", "per_group"),
    mlp=(GatedMLP("{p}layers.{i}.feed_forward.w1.weight", "{p}layers.{i}.feed_forward.w3.weight"),),
    norms=NormGains(("{p}layers.{i}.attention_norm.weight",), ("{p}layers.{i}.ffn_norm.weight",)),
    source="documented",
)
