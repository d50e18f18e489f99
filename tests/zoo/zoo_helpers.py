"""Helpers for the zoo tests: tiny configs, random-but-nontrivial parameters, a jitted forward."""

from __future__ import annotations

import functools

import jax
import numpy as np

from awm_jax.zoo.checkpoint import from_state_dict, to_state_dict
from awm_jax.zoo.model import ModelConfig, forward_logits, init_params

ARCHS = ("llama", "mixtral", "llava")
FEATURE_SIZE = 24


def tiny_config(arch: str = "llama", **changes) -> ModelConfig:
    """A 2-layer GQA model small enough to run eagerly in milliseconds."""
    extra = {"llama": {}, "mixtral": {"num_local_experts": 3, "num_experts_per_tok": 2},
             "llava": {"vision_feature_size": FEATURE_SIZE}}[arch]
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, architecture=arch,
                init_std=0.2, **extra)
    base.update(changes)
    return ModelConfig(**base)


def random_state(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Initialised parameters with RMSNorm gains and biases drawn away from 1 and 0, so that
    tests of gain handling can fail."""
    state = to_state_dict(init_params(cfg, seed))
    rng = np.random.default_rng(seed + 1000)
    for k, v in state.items():
        if v.ndim == 1:
            state[k] = (v + rng.normal(0.0, 0.4, v.shape)).astype(np.float32)
    return state


@functools.lru_cache(maxsize=None)
def _jitted(cfg: ModelConfig):
    return jax.jit(functools.partial(forward_logits, cfg))


def logits(cfg: ModelConfig, state: dict[str, np.ndarray], ids, feats=None) -> np.ndarray:
    """``[B, T, V]`` float32 logits of a state dict (jitted once per config)."""
    return np.asarray(_jitted(cfg)(from_state_dict(state), ids, feats))
