"""Attention sizes of a model, read from its ``config.json``.

:class:`Dims` carries what splitting and checking the projections needs: the residual width,
query and key/value head counts, the head width, the fused-QKV split rule the config implies,
and for DeepSeek multi-head latent attention (MLA) the low-rank sizes (:class:`MLADims`).
Config keys are looked up in the top-level config and in ``text_config``/``llm_config`` (the
language model of wrapped multimodal checkpoints).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from awm_jax.errors import LayoutError

__all__ = ["Dims", "MLADims", "MalformedConfig", "config_value", "config_scopes"]


class MalformedConfig(LayoutError):
    """A config value the layout needs is present but malformed (``kv_n_heads = "x"``).

    Unlike a missing head count, which only fused projections need, it is never ignored: the
    layout reports it, prefixed with the model folder.
    """


def config_scopes(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The language-model config first (``text_config``, ``llm_config``, ``thinker_config``), then the top level."""
    scopes: list[Mapping[str, Any]] = []
    for key in ("text_config", "llm_config", "language_config"):
        sub = config.get(key)
        if isinstance(sub, Mapping):
            scopes.append(sub)
    thinker = config.get("thinker_config")
    if isinstance(thinker, Mapping) and isinstance(thinker.get("text_config"), Mapping):
        scopes.append(thinker["text_config"])
    scopes.append(config)
    return scopes


def config_value(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """Returns the first of ``keys`` present (not null) in the language-model config.

    The language model's own config (``text_config``...) is searched before the top level, so
    a multimodal checkpoint's ``hidden_size`` is its language model's, not its vision tower's.
    """
    for scope in config_scopes(config):
        for key in keys:
            if scope.get(key) is not None:
                return scope[key]
    return default


@dataclasses.dataclass(frozen=True)
class MLADims:
    """Sizes of DeepSeek multi-head latent attention.

    Attributes:
      q_lora_rank: rank of the query down-projection, ``None`` when the query is a plain ``q_proj``.
      kv_lora_rank: rank of the compressed key/value latent.
      qk_nope_head_dim: per-head key/query width without rotary embedding.
      qk_rope_head_dim: width of the rotary part (the key's is shared by all heads).
      v_head_dim: per-head value width.
    """

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MLADims:
        need = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        missing = [k for k in need if config_value(config, k) is None]
        if missing:
            raise LayoutError(f"config.json lacks {', '.join(missing)}, needed to split multi-head latent attention")
        q_rank = config_value(config, "q_lora_rank")
        return cls(
            q_lora_rank=int(q_rank) if q_rank is not None else None,
            kv_lora_rank=int(config_value(config, "kv_lora_rank")),
            qk_nope_head_dim=int(config_value(config, "qk_nope_head_dim")),
            qk_rope_head_dim=int(config_value(config, "qk_rope_head_dim")),
            v_head_dim=int(config_value(config, "v_head_dim")),
        )


@dataclasses.dataclass(frozen=True)
class Dims:
    """Attention sizes of one model, from its config.

    Attributes:
      hidden: residual width ``n``.
      heads: number of query heads.
      kv_heads: number of key/value heads (== heads for multi-head attention).
      head_dim: per-head width.
      fused_rule: the fused-QKV split rule the config implies (see ``SPLIT_RULES``).
      mla: multi-head latent attention sizes, for DeepSeek-V2/V3.
    """

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    fused_rule: str = "blocks"
    mla: MLADims | None = None

    @property
    def q_dim(self) -> int:
        """Rows of ``Wq``: ``heads * head_dim``."""
        return self.heads * self.head_dim

    @property
    def k_dim(self) -> int:
        """Rows of ``Wk``: ``kv_heads * head_dim``."""
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Mapping[str, Any], hidden: int) -> Dims:
        """Reads head counts and width with the usual Hugging Face keys.

        Args:
          config: the ``config.json`` dict.
          hidden: residual width, taken from the embedding.

        Raises:
          LayoutError: no head count in the config.
        """
        heads = config_value(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
        if not heads:
            raise LayoutError("config.json gives no num_attention_heads; cannot split the attention projections")
        heads = int(heads)
        kv = config_value(config, "num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv")
        kv = int(kv or heads)
        head_dim = int(config_value(config, "head_dim", "kv_channels", default=0) or hidden // heads)
        return cls(hidden=hidden, heads=heads, kv_heads=kv, head_dim=head_dim)
