"""DeepSeek-V2/V3 (and Kimi-K2): multi-head latent attention (MLA).

MLA has no ``q_proj``/``k_proj`` pair of full rank; awm_jax scores the linear maps from the
residual stream to the query and key states the attention actually uses, with the gains of
the latent RMS norms folded in and their per-token ``1/rms`` factor (a positive scalar per
token, which no weight matrix can express) left out:

Query ``Wq`` ``[heads * (qk_nope + qk_rope), n]``
    ``q_b_proj @ diag(q_a_layernorm) @ q_a_proj`` when ``q_lora_rank`` is set (V2, V3), else
    ``q_proj`` (V2-Lite). Rows are per head ``[nope | rope]``.
Key ``Wk`` ``[heads * qk_nope + qk_rope, n]``
    the ``k_nope`` rows of ``kv_b_proj`` (per head the first ``qk_nope_head_dim`` of its
    ``qk_nope + v_head_dim`` rows) times ``diag(kv_a_layernorm) @ kv_a_proj_with_mqa[:kv_lora_rank]``,
    followed by the shared rotary key ``kv_a_proj_with_mqa[kv_lora_rank:]`` once (every head
    uses the same ``k_pe`` rows, so repeating them per head would only weight them more).

Layers past ``num_hidden_layers`` (the multi-token-prediction module of V3 checkpoints,
``num_nextn_predict_layers``) are not decoder layers and are not scored. The first
``first_k_dense_replace`` layers have a dense MLP, the others routed plus shared experts.

Pre-norm RMSNorm gains (folded in the canonical mode, after the latent gains above):
``input_layernorm`` before the attention (it feeds ``q_a_proj``/``q_proj`` and
``kv_a_proj_with_mqa``, the residual side of both maps), ``post_attention_layernorm`` before the
MLP (dense, routed and shared experts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from awm_jax.errors import LayoutError
from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims, MLADims
from awm_jax.layouts._mlp import Experts, GatedMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import Projection
from awm_jax.layouts._quant import WeightReader

__all__ = ["DEEPSEEK", "MLAQuery", "MLAKey", "mla_dims"]

_ATTN = "{p}layers.{i}.self_attn."


def mla_dims(config: Mapping[str, Any], hidden: int) -> Dims:
    """Attention sizes with the MLA ranks; ``head_dim`` is the query/key head width."""
    base = Dims.from_config(config, hidden)
    mla = MLADims.from_config(config)
    return Dims(hidden, base.heads, base.heads, mla.qk_nope_head_dim + mla.qk_rope_head_dim, mla=mla)


def _need_mla(dims: Dims | None) -> MLADims:
    if dims is None or dims.mla is None:
        raise LayoutError("multi-head latent attention needs kv_lora_rank and the head sizes in config.json")
    return dims.mla


def _check_shapes(reader: WeightReader, expected: Sequence[tuple[str, tuple[int, ...]]]) -> None:
    """Each named tensor has the shape the config implies (checked without reading data)."""
    for name, want in expected:
        got = tuple(reader.shape(name))
        if got != want:
            raise LayoutError(
                f"{reader.ckpt.root}: {name} has shape {got}, the config implies {want}; "
                "the config contradicts the tensors: fix config.json"
            )


def _fold(reader: WeightReader, up: str, norm: str, down: str, rows: slice | None = None) -> np.ndarray:
    """``up @ diag(norm) @ down[rows]``: a low-rank path through an RMS-normalised latent."""
    w_up, gain, w_down = reader.matrix(up), reader.vector(norm), reader.matrix(down)
    w_down = w_down if rows is None else w_down[rows]
    if not (w_up.shape[1] == gain.shape[0] == w_down.shape[0]):
        raise LayoutError(
            f"{reader.ckpt.root}: {up} {w_up.shape}, {norm} {gain.shape} and {down} {w_down.shape} do not chain; "
            "the config contradicts the tensors"
        )
    return w_up @ (gain[:, None] * w_down)


@dataclasses.dataclass(frozen=True)
class MLAQuery(Projection):
    """The MLA query map (see the module docstring)."""

    def tensor_names(self, dims: Dims | None = None) -> tuple[str, ...]:
        if dims is not None and dims.mla is not None and dims.mla.q_lora_rank is None:
            return (_ATTN + "q_proj.weight",)
        return (_ATTN + "q_b_proj.weight", _ATTN + "q_a_layernorm.weight", _ATTN + "q_a_proj.weight")

    def rows(self, reader: WeightReader, names: Sequence[str], dims: Dims | None, hidden: int) -> int:
        mla = _need_mla(dims)
        out = dims.heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        if len(names) == 1:
            _check_shapes(reader, [(names[0], (out, hidden))])
        else:
            if mla.q_lora_rank is None:
                raise LayoutError(f"{reader.ckpt.root}: {names[2]} exists but config.json gives no q_lora_rank")
            _check_shapes(reader, [(names[0], (out, mla.q_lora_rank)), (names[1], (mla.q_lora_rank,)),
                                   (names[2], (mla.q_lora_rank, hidden))])
        return out

    def read(self, reader: WeightReader, names: Sequence[str], dims: Dims | None) -> np.ndarray:
        mla = _need_mla(dims)
        w = reader.matrix(names[0]) if len(names) == 1 else _fold(reader, *names)
        expected = dims.heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        if w.shape[0] != expected:
            raise LayoutError(
                f"{reader.ckpt.root}: {names[0]} gives {w.shape[0]} query rows, the config implies {expected} "
                f"({dims.heads} heads x {mla.qk_nope_head_dim}+{mla.qk_rope_head_dim}); fix config.json"
            )
        return w


@dataclasses.dataclass(frozen=True)
class MLAKey(Projection):
    """The MLA key map (see the module docstring)."""

    def tensor_names(self, dims: Dims | None = None) -> tuple[str, ...]:
        return (_ATTN + "kv_b_proj.weight", _ATTN + "kv_a_layernorm.weight", _ATTN + "kv_a_proj_with_mqa.weight")

    def rows(self, reader: WeightReader, names: Sequence[str], dims: Dims | None, hidden: int) -> int:
        mla = _need_mla(dims)
        kv_b, norm, kv_a = names
        _check_shapes(reader, [(kv_b, (dims.heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank)),
                               (norm, (mla.kv_lora_rank,)), (kv_a, (mla.kv_lora_rank + mla.qk_rope_head_dim, hidden))])
        return dims.heads * mla.qk_nope_head_dim + mla.qk_rope_head_dim

    def read(self, reader: WeightReader, names: Sequence[str], dims: Dims | None) -> np.ndarray:
        mla = _need_mla(dims)
        kv_b, norm, kv_a = names
        w_b = reader.matrix(kv_b)
        per_head = mla.qk_nope_head_dim + mla.v_head_dim
        if w_b.shape[0] != dims.heads * per_head:
            raise LayoutError(
                f"{reader.ckpt.root}: {kv_b} has {w_b.shape[0]} rows, the config implies {dims.heads * per_head} "
                f"({dims.heads} heads x {mla.qk_nope_head_dim}+{mla.v_head_dim}); fix config.json"
            )
        w_a = reader.matrix(kv_a)
        if w_a.shape[0] != mla.kv_lora_rank + mla.qk_rope_head_dim:
            raise LayoutError(
                f"{reader.ckpt.root}: {kv_a} has {w_a.shape[0]} rows, the config implies "
                f"{mla.kv_lora_rank} + {mla.qk_rope_head_dim}; fix config.json"
            )
        k_nope_rows = w_b.reshape(dims.heads, per_head, -1)[:, : mla.qk_nope_head_dim].reshape(-1, w_b.shape[1])
        gain = reader.vector(norm)
        k_nope = k_nope_rows @ (gain[:, None] * w_a[: mla.kv_lora_rank])
        return np.concatenate([k_nope, w_a[mla.kv_lora_rank:]], axis=0)


_DENSE = GatedMLP("{p}layers.{i}.mlp.gate_proj.weight", "{p}layers.{i}.mlp.up_proj.weight")

DEEPSEEK = Layout(
    name="deepseek_mla",
    architectures=("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV2Model", "DeepseekV3Model"),
    model_types=("deepseek_v2", "deepseek_v3", "kimi_k2"),
    embedding=("{p}embed_tokens.weight",),
    query=MLAQuery(),
    key=MLAKey(),
    mlp=(
        Experts(
            GatedMLP("{p}layers.{i}.mlp.experts.{e}.gate_proj.weight", "{p}layers.{i}.mlp.experts.{e}.up_proj.weight"),
            shared=(GatedMLP("{p}layers.{i}.mlp.shared_experts.gate_proj.weight",
                             "{p}layers.{i}.mlp.shared_experts.up_proj.weight", name="shared expert"),),
        ),
        _DENSE,
    ),
    markers=(_ATTN + "kv_a_proj_with_mqa.weight", _ATTN + "kv_b_proj.weight"),
    dims=mla_dims,
    norms=NormGains(("{p}layers.{i}.input_layernorm.weight",), ("{p}layers.{i}.post_attention_layernorm.weight",)),
)
