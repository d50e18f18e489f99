"""MPT: fused ``Wqkv`` as contiguous ``[Q | K | V]`` blocks (``qkv.chunk(3)``).

Grouped-query MPT variants (``attn_config.attn_type = "grouped_query_attention"`` with
``kv_n_heads``, or ``multiquery_attention``) keep the block order with fewer key/value rows:
``split([d_model, kv_n_heads * head_dim, kv_n_heads * head_dim])``.

Pre-norm LayerNorms: ``norm_1`` before the attention, ``norm_2`` before the MLP (gains folded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims, MalformedConfig, config_value
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["MPT", "mpt_dims"]


def mpt_dims(config: Mapping[str, Any], hidden: int) -> Dims:
    """Heads from ``n_heads``; key/value heads from ``attn_config`` (multi-head by default)."""
    base = Dims.from_config(config, hidden)
    attn = config_value(config, "attn_config", default={}) or {}
    kind = attn.get("attn_type", "multihead_attention") if isinstance(attn, Mapping) else "multihead_attention"
    kv = base.heads
    if kind == "multiquery_attention":
        kv = 1
    elif kind == "grouped_query_attention":
        kv = attn.get("kv_n_heads")
        if kv is None:
            kv = base.heads
        elif isinstance(kv, bool) or not isinstance(kv, int) or not 1 <= kv <= base.heads:
            shown = repr(kv) if len(repr(kv)) <= 40 else repr(kv)[:37] + "..."
            raise MalformedConfig(
                f"config.json: attn_config.kv_n_heads is {shown}, expected an integer in [1, n_heads = {base.heads}]; "
                "fix config.json"
            )
    return Dims(hidden, base.heads, kv, hidden // base.heads, fused_rule="blocks")


_QKV = "{p}blocks.{i}.attn.Wqkv.weight"
MPT = Layout(
    name="mpt",
    architectures=("MptForCausalLM", "MPTForCausalLM", "MptModel"),
    model_types=("mpt",),
    embedding=("{p}wte.weight",),
    query=FusedSplit(_QKV, "q", "blocks"),
    key=FusedSplit(_QKV, "k", "blocks"),
    bases=("transformer.", ""),
    mlp=(PlainMLP("{p}blocks.{i}.ffn.up_proj.weight"),),
    norms=NormGains(("{p}blocks.{i}.norm_1.weight",), ("{p}blocks.{i}.norm_2.weight",)),
    dims=mpt_dims,
)
