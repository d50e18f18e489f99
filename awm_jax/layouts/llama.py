"""Llama-family layout: separate ``q_proj``/``k_proj`` tensors under ``model.layers.{i}``.

Covers every decoder whose attention stores query and key projections as their own
``Linear`` weights (grouped- and multi-query attention just give ``k_proj`` fewer rows).
"""

from awm_jax.layouts._base import Layout, Separate

__all__ = ["LLAMA"]

LLAMA = Layout(
    name="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
    model_types=("llama", "mistral", "qwen2"),
    embedding=("{p}model.embed_tokens.weight",),
    query=Separate("{p}model.layers.{i}.self_attn.q_proj.weight"),
    key=Separate("{p}model.layers.{i}.self_attn.k_proj.weight"),
)
