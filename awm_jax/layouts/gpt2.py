"""GPT-2: fused ``c_attn`` stored as a ``Conv1D`` weight ``[hidden, 3 * hidden]``.

The fused output is ``[Q | K | V]`` in contiguous blocks; ``Conv1D`` stores the transpose of a
``Linear`` weight, so the tensor is transposed before splitting. Checkpoints saved from the
bare ``GPT2Model`` (``openai-community/gpt2`` itself) have no ``transformer.`` prefix.

Pre-norm LayerNorms: ``ln_1`` before the attention, ``ln_2`` before the MLP (gains folded).
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["GPT2"]

_QKV = "{p}h.{i}.attn.c_attn.weight"

GPT2 = Layout(
    name="gpt2",
    architectures=("GPT2LMHeadModel", "GPT2Model"),
    model_types=("gpt2",),
    embedding=("{p}wte.weight",),
    query=FusedSplit(_QKV, "q", "blocks", transposed=True),
    key=FusedSplit(_QKV, "k", "blocks", transposed=True),
    bases=("transformer.", ""),
    mlp=(PlainMLP("{p}h.{i}.mlp.c_fc.weight", transposed=True),),
    norms=NormGains(("{p}h.{i}.ln_1.weight",), ("{p}h.{i}.ln_2.weight",)),
)
