"""OPT: separate ``q_proj``/``k_proj`` under ``model.decoder.layers.{i}.self_attn``.

OPT-350m embeds into ``word_embed_proj_dim`` (512) and projects up to ``hidden_size`` (1024)
with ``model.decoder.project_in``; the effective input embedding is then ``E @ P^T``. OPT
multiplies the query by ``head_dim ** -0.5`` after ``q_proj``, a constant that CKA ignores.

With ``do_layer_norm_before`` (the default, every OPT but 350m) the LayerNorms are pre-norms:
``self_attn_layer_norm`` before the attention, the layer's ``final_layer_norm`` before the MLP
(gains folded). OPT-350m (``do_layer_norm_before = false``) normalises after each residual
addition: the next layer reads the normalised stream itself, the gain scales the residual path
too, and no fold into one matrix preserves the function: its gains are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import config_value
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import Separate

__all__ = ["OPT"]

def _pre_norm(config: Mapping[str, Any]) -> bool:
    """Whether the LayerNorms come before the attention and MLP (not OPT-350m's post-norm)."""
    return bool(config_value(config, "do_layer_norm_before", default=True))


OPT = Layout(
    name="opt",
    architectures=("OPTForCausalLM", "OPTModel"),
    model_types=("opt",),
    embedding=("{p}decoder.embed_tokens.weight",),
    query=Separate("{p}decoder.layers.{i}.self_attn.q_proj.weight"),
    key=Separate("{p}decoder.layers.{i}.self_attn.k_proj.weight"),
    mlp=(PlainMLP("{p}decoder.layers.{i}.fc1.weight"),),
    embedding_projection="{p}decoder.project_in.weight",
    norms=NormGains(("{p}decoder.layers.{i}.self_attn_layer_norm.weight",),
                    ("{p}decoder.layers.{i}.final_layer_norm.weight",),
                    applies=_pre_norm),
)
