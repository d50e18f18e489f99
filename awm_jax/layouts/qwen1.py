"""Qwen-1 (``QWenLMHeadModel``, remote code): fused ``c_attn`` ``Linear`` ``[3 * hidden, hidden]``.

From the published ``modeling_qwen.py``: ``query, key, value = self.c_attn(x).split(
self.split_size, dim=2)`` with ``split_size = hidden_size``, i.e. contiguous ``[Q | K | V]``
blocks of a ``Linear`` weight (not GPT-2's transposed ``Conv1D``, although the names look alike).
The MLP computes ``w1(x) * silu(w2(x))``: ``w2`` is the gate and ``w1`` the up projection.

Pre-norm RMSNorms: ``ln_1`` before the attention, ``ln_2`` before the MLP (gains folded).
"""

from __future__ import annotations

from awm_jax.layouts._base import Layout
from awm_jax.layouts._mlp import GatedMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import FusedSplit

__all__ = ["QWEN1"]

_QKV = "{p}h.{i}.attn.c_attn.weight"

QWEN1 = Layout(
    name="qwen",
    architectures=("QWenLMHeadModel", "QWenModel"),
    model_types=("qwen",),
    embedding=("{p}wte.weight",),
    query=FusedSplit(_QKV, "q", "blocks"),
    key=FusedSplit(_QKV, "k", "blocks"),
    bases=("transformer.", ""),
    mlp=(GatedMLP(gate="{p}h.{i}.mlp.w2.weight", up="{p}h.{i}.mlp.w1.weight"),),
    norms=NormGains(("{p}h.{i}.ln_1.weight",), ("{p}h.{i}.ln_2.weight",)),
    source="documented",
)
