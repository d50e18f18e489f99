"""Named model shapes of real checkpoints, and synthetic base/derived checkpoints of those shapes.

The base model's tensors are drawn from a seeded generator, layer by layer, so the derived
partner can regenerate them without holding the base in memory. The derived partner is the base
with noise added to every scored tensor (relative scale ``noise``) and one permutation-and-sign
of the residual dimensions applied to all of them, so the benchmark exercises the full
assignment. Tensors awm_jax never reads (V, O, MLP, norms, head) are written at their real sizes
with cheap tiled filler so the files and shard layout are those of a real checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_dtypes
import numpy as np

from awm_jax.synthetic import llama_config, write_model

__all__ = ["Shape", "SHAPES", "synthesize_pair"]

BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    s.name: s
    for s in (
        Shape("tinyllama-1.1b", 32000, 2048, 22, 32, 4, 5632),
        Shape("llama-2-7b", 32000, 4096, 32, 32, 32, 11008),
        Shape("llama-3-8b", 128256, 4096, 32, 32, 8, 14336),
        Shape("llama-2-70b-4layers", 32000, 8192, 4, 64, 8, 28672),
        Shape("tiny-test", 512, 64, 3, 4, 2, 128),
    )
}


def _filler(shape: tuple[int, ...]) -> np.ndarray:
    block = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 0.02
    return np.resize(block, shape).astype(BF16)


def synthesize_pair(shape: Shape, root: Path, seed: int = 0, noise: float = 0.3, shard_bytes: int = 4 << 30,
                    lean: bool = False) -> tuple[Path, Path]:
    """Writes ``root/base`` and ``root/derived`` (bf16, sharded with an index); returns both paths.

    ``lean`` writes only the tensors awm_jax reads (embedding, Q, K, norms): smaller files,
    faster synthesis, for machines with little disk or time.
    """
    n = shape.hidden
    q_rows, k_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    perm_rng = np.random.default_rng(seed + 1)
    perm = perm_rng.permutation(n)
    signs = perm_rng.choice(np.array([-1.0, 1.0], np.float32), n)

    def base_tensor(tag: int, rows: int, scale: float) -> np.ndarray:
        return np.random.default_rng([seed, tag]).standard_normal((rows, n), np.float32) * scale

    def derived_tensor(tag: int, rows: int, scale: float) -> np.ndarray:
        w = base_tensor(tag, rows, scale)
        w += noise * scale * np.random.default_rng([seed, tag, 7]).standard_normal((rows, n), np.float32)
        return w[:, perm] * signs

    paths = []
    for name, make in (("base", base_tensor), ("derived", derived_tensor)):
        specs = [("model.embed_tokens.weight", (shape.vocab, n), BF16, lambda make=make: make(0, shape.vocab, 1.0))]
        for i in range(shape.layers):
            p = f"model.layers.{i}."
            specs += [
                (p + "input_layernorm.weight", (n,), BF16, lambda: np.ones(n, BF16)),
                (p + "self_attn.q_proj.weight", (q_rows, n), BF16, lambda i=i, make=make: make(2 * i + 1, q_rows, 0.02)),
                (p + "self_attn.k_proj.weight", (k_rows, n), BF16, lambda i=i, make=make: make(2 * i + 2, k_rows, 0.02)),
                (p + "self_attn.v_proj.weight", (k_rows, n), BF16, lambda: _filler((k_rows, n))),
                (p + "self_attn.o_proj.weight", (n, q_rows), BF16, lambda: _filler((n, q_rows))),
                (p + "post_attention_layernorm.weight", (n,), BF16, lambda: np.ones(n, BF16)),
                (p + "mlp.gate_proj.weight", (shape.intermediate, n), BF16, lambda: _filler((shape.intermediate, n))),
                (p + "mlp.up_proj.weight", (shape.intermediate, n), BF16, lambda: _filler((shape.intermediate, n))),
                (p + "mlp.down_proj.weight", (n, shape.intermediate), BF16, lambda: _filler((n, shape.intermediate))),
            ]
        if lean:
            specs = [spec for spec in specs if spec[0].endswith(("embed_tokens.weight", "q_proj.weight", "k_proj.weight", "norm.weight"))]
        specs += [("model.norm.weight", (n,), BF16, lambda: np.ones(n, BF16)),
                  ] + ([] if lean else [("lm_head.weight", (shape.vocab, n), BF16, lambda: _filler((shape.vocab, n)))])
        cfg = llama_config(shape.vocab, n, shape.layers, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate)
        tokens = [f"t{i}" for i in range(shape.vocab)]
        paths.append(write_model(root / name, specs, cfg, tokens, shard_bytes))
    return paths[0], paths[1]
