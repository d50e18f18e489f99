"""ChatGLM2/3 and GLM-4 (remote ``ChatGLMModel`` code): fused ``query_key_value``.

From the published ``modeling_chatglm.py``: with ``multi_query_attention`` (every ChatGLM2,
ChatGLM3 and GLM-4 release) ``mixed_x_layer.split([heads * kv_channels,
multi_query_group_num * kv_channels, multi_query_group_num * kv_channels])``: contiguous
``[Q | K | V]`` blocks with ``multi_query_group_num`` key/value heads of width ``kv_channels``
(not interleaved per group). Without multi-query the rows are interleaved per head
``[heads, 3, kv_channels]``. The MLP's ``dense_h_to_4h`` is ``[gate | up]`` (``swiglu`` takes
``chunk(2)``). The transformers-native GLM-4 (``GlmForCausalLM``) is the ``glm`` layout.

Pre-norm RMSNorms: ``input_layernorm`` before the attention, ``post_attention_layernorm`` before
the MLP (gains folded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims, config_value
from awm_jax.layouts._mlp import FusedGatedMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["CHATGLM", "chatglm_dims"]


def chatglm_dims(config: Mapping[str, Any], hidden: int) -> Dims:
    """Blocks with ``multi_query_group_num`` key/value heads, else per head."""
    base = Dims.from_config(config, hidden)
    head_dim = int(config_value(config, "kv_channels", default=0) or hidden // base.heads)
    if config_value(config, "multi_query_attention", default=False):
        groups = int(config_value(config, "multi_query_group_num", default=1))
        return Dims(hidden, base.heads, groups, head_dim, fused_rule="blocks")
    return Dims(hidden, base.heads, base.heads, head_dim, fused_rule="per_head")


_QKV = "{p}encoder.layers.{i}.self_attention.query_key_value.weight"

CHATGLM = Layout(
    name="chatglm",
    architectures=("ChatGLMModel", "ChatGLMForConditionalGeneration"),
    model_types=("chatglm",),
    embedding=("{p}embedding.word_embeddings.weight",),
    query=FusedSplit(_QKV, "q", "config"),
    key=FusedSplit(_QKV, "k", "config"),
    bases=("transformer.", ""),
    mlp=(FusedGatedMLP("{p}encoder.layers.{i}.mlp.dense_h_to_4h.weight"),),
    norms=NormGains(("{p}encoder.layers.{i}.input_layernorm.weight",),
                    ("{p}encoder.layers.{i}.post_attention_layernorm.weight",)),
    dims=chatglm_dims,
    source="documented",
)
