"""GPT-BigCode (StarCoder, SantaCoder-style): fused ``c_attn`` ``Linear`` weight.

With ``multi_query`` (the default and every StarCoder release) ``c_attn`` holds
``[Q (hidden) | K (head_dim) | V (head_dim)]`` in contiguous blocks; without it, the rows are
interleaved per head ``[heads, 3, head_dim]``. Unlike GPT-2 the weight is a ``Linear``
``[out, hidden]``, not a transposed ``Conv1D``.

Pre-norm LayerNorms: ``ln_1`` before the attention, ``ln_2`` before the MLP (gains folded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims, config_value
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["GPT_BIGCODE"]

_QKV = "{p}h.{i}.attn.c_attn.weight"


def bigcode_dims(config: Mapping[str, Any], hidden: int) -> Dims:
    """Multi-query (one key/value head, blocks) unless ``multi_query`` is false (per head)."""
    base = Dims.from_config(config, hidden)
    if config_value(config, "multi_query", default=True):
        return Dims(hidden, base.heads, 1, hidden // base.heads, fused_rule="blocks")
    return Dims(hidden, base.heads, base.heads, hidden // base.heads, fused_rule="per_head")


GPT_BIGCODE = Layout(
    name="gpt_bigcode",
    architectures=("GPTBigCodeForCausalLM", "GPTBigCodeModel"),
    model_types=("gpt_bigcode",),
    embedding=("{p}wte.weight",),
    query=FusedSplit(_QKV, "q", "config"),
    key=FusedSplit(_QKV, "k", "config"),
    bases=("transformer.", ""),
    mlp=(PlainMLP("{p}h.{i}.mlp.c_fc.weight"),),
    norms=NormGains(("{p}h.{i}.ln_1.weight",), ("{p}h.{i}.ln_2.weight",)),
    dims=bigcode_dims,
)
