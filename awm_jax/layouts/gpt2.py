"""GPT-2 layout: fused ``c_attn`` stored as a ``Conv1D`` weight ``[hidden, 3 * hidden]``.

The fused output is ``[Q | K | V]`` in contiguous blocks; ``Conv1D`` stores the transpose of a
``Linear`` weight, so the tensor is transposed before splitting.
"""

from awm_jax.layouts._base import FusedSplit, Layout

__all__ = ["GPT2"]

GPT2 = Layout(
    name="gpt2",
    architectures=("GPT2LMHeadModel", "GPT2Model"),
    model_types=("gpt2",),
    embedding=("{p}transformer.wte.weight", "{p}wte.weight"),
    query=FusedSplit("{p}transformer.h.{i}.attn.c_attn.weight", "q", "blocks", transposed=True),
    key=FusedSplit("{p}transformer.h.{i}.attn.c_attn.weight", "k", "blocks", transposed=True),
)
