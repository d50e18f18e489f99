"""Small Llama-architecture decoders in flax, with Mixtral (MoE) and LLaVA (multimodal) variants.

The parameter tree of every module mirrors the Hugging Face tensor names exactly: the path of a
parameter joined with ``"."`` is its name in a ``LlamaForCausalLM``, ``MixtralForCausalLM`` or
``LlavaForConditionalGeneration`` checkpoint, and every matrix is stored in the PyTorch
``Linear`` layout ``[out, in]``. So ``model.layers.0.self_attn.q_proj.weight`` is
``params["model"]["layers.0"]["self_attn"]["q_proj"]["weight"]`` with shape
``[num_attention_heads * head_dim, hidden_size]``.

Conventions follow the Hugging Face Llama implementation: RMSNorm computed in float32 and
multiplied by its gain, rotary position embedding with the ``rotate_half`` convention (dimension
``i`` of a head pairs with ``i + head_dim / 2``), grouped-query attention where query head ``h``
reads key/value head ``h // (num_attention_heads / num_key_value_heads)``, SwiGLU MLP
``down(silu(gate(x)) * up(x))``, untied ``lm_head``. The Mixtral block routes every token to its
``num_experts_per_tok`` best experts with softmax weights renormalised over the chosen experts.
The LLaVA wrapper maps non-text feature vectors through a two-layer GELU projector into the
embedding space and places them before the text tokens.

Modules sow activations into the ``intermediates`` collection (per-head attention outputs,
MLP activations, normalised layer inputs, residual streams, router logits); they are only
collected when ``apply`` is called with ``mutable=["intermediates"]`` (pruning importance
scores and the MoE load-balancing loss use them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import flax.linen as nn

__all__ = [
    "ModelConfig",
    "CausalLM",
    "LlavaLM",
    "build_module",
    "init_params",
    "forward_logits",
    "num_parameters",
    "PRECISION",
]

#: Matmul precision used by every projection of the zoo models. On CPU float32 matmuls are exact
#: regardless; the explicit setting keeps logits comparable on accelerators, where the default
#: would be TF32 or bf16 and function-preservation checks would fail spuriously.
PRECISION = jax.lax.Precision.HIGHEST

Architecture = Literal["llama", "mixtral", "llava"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and hyper-parameters of one zoo model.

    Attributes:
        vocab_size: number of token embeddings ``V``.
        hidden_size: residual width ``n``.
        intermediate_size: MLP (or per-expert) inner width ``m``.
        num_hidden_layers: decoder depth ``L``.
        num_attention_heads: query heads ``H``.
        num_key_value_heads: key/value heads ``K`` (``H % K == 0``).
        head_dim: per-head width ``d`` (even, for rotary embedding).
        architecture: ``"llama"``, ``"mixtral"`` or ``"llava"``.
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: rotary base.
        max_position_embeddings: longest sequence the model is meant for.
        num_local_experts: experts per MoE block (``"mixtral"`` only).
        num_experts_per_tok: experts each token is routed to (``"mixtral"`` only).
        vision_feature_size: width of one non-text feature vector (``"llava"`` only).
        init_std: standard deviation of the normal initialisation of every matrix.
        bos_token_id: id of the beginning-of-sequence token.
        eos_token_id: id of the end-of-sequence token.
        pad_token_id: id of the padding token.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    architecture: Architecture = "llama"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    num_local_experts: int = 0
    num_experts_per_tok: int = 2
    vision_feature_size: int = 0
    init_std: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embedding, got {self.head_dim}")
        if self.architecture not in ("llama", "mixtral", "llava"):
            raise ValueError(
                f"architecture must be 'llama', 'mixtral' or 'llava', got {self.architecture!r}"
            )
        if self.architecture == "mixtral" and not (
            0 < self.num_experts_per_tok <= self.num_local_experts
        ):
            raise ValueError(
                "a mixtral config needs 0 < num_experts_per_tok <= num_local_experts, got "
                f"{self.num_experts_per_tok} and {self.num_local_experts}"
            )
        if self.architecture == "llava" and self.vision_feature_size <= 0:
            raise ValueError("a llava config needs vision_feature_size > 0")

    def replace(self, **changes: Any) -> "ModelConfig":
        """Returns a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict` (unknown keys are rejected)."""
        return cls(**d)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with ``W`` stored as ``weight [out, in]`` (PyTorch layout)."""

    in_features: int
    out_features: int
    use_bias: bool = False
    std: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[..., in]``. Returns ``[..., out]``."""
        w = self.param("weight", _normal(self.std), (self.out_features, self.in_features))
        y = jnp.einsum("...i,oi->...o", x, w, precision=PRECISION)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.out_features,))
        return y


class Embedding(nn.Module):
    """Token embedding stored as ``weight [V, n]``."""

    num_embeddings: int
    features: int
    std: float = 0.02

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        """Args: ids ``[...]`` int. Returns ``[..., n]``."""
        w = self.param("weight", _normal(self.std), (self.num_embeddings, self.features))
        return jnp.take(w, ids, axis=0)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` in float32, gain ``weight [n]``."""

    features: int
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[..., n]``. Returns ``[..., n]``."""
        g = self.param("weight", nn.initializers.ones, (self.features,))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * g).astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """Hugging Face ``rotate_half``: ``[x1, x2] -> [-x2, x1]`` on the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Rotary tables in the Hugging Face layout.

    Args:
        positions: ``[T]`` int positions.
        head_dim: per-head width ``d``.
        theta: rotary base.

    Returns:
        ``(cos, sin)``, each ``[T, d]``; frequency ``i`` sits at columns ``i`` and ``i + d/2``.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embedding (``self_attn``)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[B, T, n]`` (already normalised). Returns ``[B, T, n]``."""
        c = self.cfg
        b, t, _ = x.shape
        h, kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q = Linear(c.hidden_size, h * d, std=c.init_std, name="q_proj")(x).reshape(b, t, h, d)
        k = Linear(c.hidden_size, kv * d, std=c.init_std, name="k_proj")(x).reshape(b, t, kv, d)
        v = Linear(c.hidden_size, kv * d, std=c.init_std, name="v_proj")(x).reshape(b, t, kv, d)
        cos, sin = rope_cos_sin(jnp.arange(t), d, c.rope_theta)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = h // kv
        k = jnp.repeat(k, group, axis=2)  # head h reads kv head h // group
        v = jnp.repeat(v, group, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=PRECISION) / jnp.sqrt(
            jnp.float32(d)
        )
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        scores = jnp.where(causal[None, None], scores.astype(jnp.float32), -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=PRECISION)
        self.sow("intermediates", "heads", out)  # [B, T, H, d], for head importance
        out = out.reshape(b, t, h * d)
        return Linear(h * d, c.hidden_size, std=c.init_std, name="o_proj")(out)


class MLP(nn.Module):
    """SwiGLU MLP ``down(silu(gate(x)) * up(x))`` with Llama names (``mlp``)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[..., n]``. Returns ``[..., n]``."""
        c = self.cfg
        g = Linear(c.hidden_size, c.intermediate_size, std=c.init_std, name="gate_proj")(x)
        u = Linear(c.hidden_size, c.intermediate_size, std=c.init_std, name="up_proj")(x)
        act = jax.nn.silu(g) * u
        self.sow("intermediates", "act", act)  # [..., m], for channel importance
        return Linear(c.intermediate_size, c.hidden_size, std=c.init_std, name="down_proj")(act)


class Expert(nn.Module):
    """One Mixtral expert ``w2(silu(w1(x)) * w3(x))``."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[..., n]``. Returns ``[..., n]``."""
        c = self.cfg
        a = Linear(c.hidden_size, c.intermediate_size, std=c.init_std, name="w1")(x)
        u = Linear(c.hidden_size, c.intermediate_size, std=c.init_std, name="w3")(x)
        return Linear(c.intermediate_size, c.hidden_size, std=c.init_std, name="w2")(
            jax.nn.silu(a) * u
        )


class SparseMoeBlock(nn.Module):
    """Mixtral ``block_sparse_moe``: router ``gate`` and ``experts.{e}``.

    Every expert is evaluated densely (the models are tiny) and combined with a weight that is
    zero outside each token's top-k experts, which equals sparse dispatch exactly. The router
    logits ``[B, T, E]`` are sown into the ``intermediates`` collection for the load-balancing
    loss.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[B, T, n]``. Returns ``[B, T, n]``."""
        c = self.cfg
        e = c.num_local_experts
        logits = Linear(c.hidden_size, e, std=c.init_std, name="gate")(x)
        self.sow("intermediates", "router_logits", logits)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        top_w, top_i = jax.lax.top_k(probs, c.num_experts_per_tok)
        top_w = top_w / jnp.sum(top_w, axis=-1, keepdims=True)
        dense_w = jnp.sum(jax.nn.one_hot(top_i, e, dtype=top_w.dtype) * top_w[..., None], axis=-2)
        outs = jnp.stack([Expert(c, name=f"experts.{i}")(x) for i in range(e)], axis=-2)
        return jnp.einsum("btef,bte->btf", outs, dense_w.astype(x.dtype), precision=PRECISION)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer (``model.layers.{i}``)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x ``[B, T, n]`` residual stream. Returns ``[B, T, n]``."""
        c = self.cfg
        self.sow("intermediates", "residual_in", x)
        a = RMSNorm(c.hidden_size, c.rms_norm_eps, name="input_layernorm")(x)
        self.sow("intermediates", "attn_in", a)
        x = x + Attention(c, name="self_attn")(a)
        h = RMSNorm(c.hidden_size, c.rms_norm_eps, name="post_attention_layernorm")(x)
        self.sow("intermediates", "mlp_in", h)
        if c.architecture == "mixtral":
            return x + SparseMoeBlock(c, name="block_sparse_moe")(h)
        return x + MLP(c, name="mlp")(h)


class DecoderStack(nn.Module):
    """Embedding, decoder layers and final norm (``model``)."""

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size, std=c.init_std)
        self.layers = [DecoderLayer(c, name=f"layers.{i}") for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def embed(self, ids: jax.Array) -> jax.Array:
        """Args: ids ``[B, T]``. Returns ``[B, T, n]``."""
        return self.embed_tokens(ids)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """Args: hidden ``[B, T, n]`` input embeddings. Returns ``[B, T, n]`` normalised states."""
        for layer in self.layers:
            hidden = layer(hidden)
        self.sow("intermediates", "residual_final", hidden)
        return self.norm(hidden)


class CausalLM(nn.Module):
    """``LlamaForCausalLM`` / ``MixtralForCausalLM``: ``model`` plus untied ``lm_head``."""

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        self.model = DecoderStack(c)
        self.lm_head = Linear(c.hidden_size, c.vocab_size, std=c.init_std)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Args: ids ``[B, T]`` int token ids. Returns logits ``[B, T, V]``."""
        return self.lm_head(self.model(self.model.embed(ids)))

    def from_embeddings(self, hidden: jax.Array) -> jax.Array:
        """Args: hidden ``[B, T, n]`` input embeddings. Returns logits ``[B, T, V]``."""
        return self.lm_head(self.model(hidden))


class Projector(nn.Module):
    """LLaVA ``multi_modal_projector``: ``linear_2(gelu(linear_1(f)))`` with biases."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        """Args: feats ``[B, P, F]``. Returns ``[B, P, n]``."""
        c = self.cfg
        h = Linear(c.vision_feature_size, c.hidden_size, True, c.init_std, name="linear_1")(feats)
        return Linear(c.hidden_size, c.hidden_size, True, c.init_std, name="linear_2")(
            jax.nn.gelu(h, approximate=False)
        )


class LlavaLM(nn.Module):
    """``LlavaForConditionalGeneration`` text path: projector + ``language_model``.

    The feature vectors stand where a vision tower's outputs would; the tower itself is not
    part of the model.
    """

    cfg: ModelConfig

    def setup(self) -> None:
        self.language_model = CausalLM(self.cfg.replace(architecture="llama"))
        self.multi_modal_projector = Projector(self.cfg)

    def __call__(self, ids: jax.Array, feats: jax.Array | None = None) -> jax.Array:
        """Logits for the text positions.

        Args:
            ids: ``[B, T]`` token ids.
            feats: ``[B, P, F]`` feature vectors placed before the text, or ``None`` for
                text only.

        Returns:
            ``[B, T, V]`` logits at the text positions.
        """
        hidden = self.language_model.model.embed(ids)
        if feats is None:
            return self.language_model.from_embeddings(hidden)
        prefix = self.multi_modal_projector(feats).astype(hidden.dtype)
        logits = self.language_model.from_embeddings(jnp.concatenate([prefix, hidden], axis=1))
        return logits[:, feats.shape[1] :]


def build_module(cfg: ModelConfig) -> nn.Module:
    """Returns the flax module for ``cfg`` (:class:`LlavaLM` or :class:`CausalLM`)."""
    return LlavaLM(cfg) if cfg.architecture == "llava" else CausalLM(cfg)


@functools.lru_cache(maxsize=32)
def _jitted_init(cfg: ModelConfig):
    module = build_module(cfg)
    ids = jnp.zeros((1, 2), jnp.int32)
    if cfg.architecture == "llava":
        feats = jnp.zeros((1, 1, cfg.vision_feature_size), jnp.float32)
        return jax.jit(lambda key: module.init(key, ids, feats))
    return jax.jit(lambda key: module.init(key, ids))


def init_params(cfg: ModelConfig, seed: int) -> dict:
    """Freshly initialised parameters.

    Args:
        cfg: model shapes.
        seed: initialisation seed; the same seed and shapes give the same parameters.

    Returns:
        The parameter tree (without the ``"params"`` collection wrapper), float32. The jitted
        initialiser is compiled once per config.
    """
    return _jitted_init(cfg)(jax.random.key(seed))["params"]


def forward_logits(
    cfg: ModelConfig, params: dict, ids: jax.Array, feats: jax.Array | None = None
) -> jax.Array:
    """Logits of a model (not jitted; wrap in ``jax.jit`` with ``cfg`` static for speed).

    Args:
        cfg: model shapes.
        params: parameter tree as returned by :func:`init_params`.
        ids: ``[B, T]`` token ids.
        feats: ``[B, P, F]`` features (``"llava"`` only) or ``None``.

    Returns:
        ``[B, T, V]`` float32 logits.
    """
    module = build_module(cfg)
    if cfg.architecture == "llava":
        return module.apply({"params": params}, ids, feats)
    return module.apply({"params": params}, ids)


def num_parameters(params: dict) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
