"""GPT-J: separate ``q_proj``/``k_proj`` under ``transformer.h.{i}.attn``, embedding ``wte``.

Attention and MLP run in parallel on one LayerNorm, ``ln_1``: its gain is folded into both.
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import Separate

__all__ = ["GPTJ"]

GPTJ = Layout(
    name="gptj",
    architectures=("GPTJForCausalLM", "GPTJModel"),
    model_types=("gptj",),
    embedding=("{p}wte.weight",),
    query=Separate("{p}h.{i}.attn.q_proj.weight"),
    key=Separate("{p}h.{i}.attn.k_proj.weight"),
    bases=("transformer.", ""),
    mlp=(PlainMLP("{p}h.{i}.mlp.fc_in.weight"),),
    norms=NormGains(("{p}h.{i}.ln_1.weight",), ("{p}h.{i}.ln_1.weight",)),
)
