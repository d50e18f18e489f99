"""OPT: separate ``q_proj``/``k_proj`` under ``model.decoder.layers.{i}.self_attn``.

OPT-350m embeds into ``word_embed_proj_dim`` (512) and projects up to ``hidden_size`` (1024)
with ``model.decoder.project_in``; the effective input embedding is then ``E @ P^T``. OPT
multiplies the query by ``head_dim ** -0.5`` after ``q_proj``, a constant that CKA ignores.
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._projections import Separate

__all__ = ["OPT"]

OPT = Layout(
    name="opt",
    architectures=("OPTForCausalLM", "OPTModel"),
    model_types=("opt",),
    embedding=("{p}decoder.embed_tokens.weight",),
    query=Separate("{p}decoder.layers.{i}.self_attn.q_proj.weight"),
    key=Separate("{p}decoder.layers.{i}.self_attn.k_proj.weight"),
    mlp=(PlainMLP("{p}decoder.layers.{i}.fc1.weight"),),
    embedding_projection="{p}decoder.project_in.weight",
)
