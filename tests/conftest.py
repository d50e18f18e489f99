"""Shared fixtures: the ../shared folder (skipped when absent) and synthetic model writers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from awm_jax.synthetic import llama_config, write_model

SHARED = Path(os.environ.get("AWM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(autouse=True, scope="session")
def _strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


@contextlib.contextmanager
def count_compilations():
    """Counts the XLA compilations made inside the block: ``with count_compilations() as c: ...``,
    then ``len(c)`` (the one compile counter of the suite, from JAX's monitoring events)."""
    events: list[str] = []

    def listener(event: str, duration: float, **_: object) -> None:
        if "backend_compile" in event:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="session")
def parity() -> Path:
    """The parity checkpoints (``../shared/parity``); the test is skipped when they are absent."""
    folder = SHARED / "parity"
    if not (folder / "llama_a").is_dir():
        pytest.skip("the parity models (../shared/parity) are not present")
    return folder


@pytest.fixture
def shared_dir() -> Path:
    if not (SHARED / "parity" / "expected.json").is_file():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AWM_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))


def save_llama(folder, emb, qs, ks, tokens=None, dtype=np.float32, shard_bytes=None, heads=None, extra=()):
    """Writes a Llama-layout checkpoint from arrays: ``emb [V, n]``, ``qs [L][d_q, n]``, ``ks [L][d_k, n]``."""
    emb = np.asarray(emb)
    vocab, hidden = emb.shape
    layers = len(qs)
    head_dim = 16 if qs[0].shape[0] % 16 == 0 and ks[0].shape[0] % 16 == 0 else qs[0].shape[0]
    heads = heads or qs[0].shape[0] // head_dim
    kv_heads = ks[0].shape[0] // head_dim
    specs = [("model.embed_tokens.weight", emb.shape, dtype, lambda: emb)]
    for i in range(layers):
        specs.append((f"model.layers.{i}.self_attn.q_proj.weight", qs[i].shape, dtype, (lambda a=qs[i]: a)))
        specs.append((f"model.layers.{i}.self_attn.k_proj.weight", ks[i].shape, dtype, (lambda a=ks[i]: a)))
    specs += list(extra)
    tokens = tokens if tokens is not None else [f"tok{i}" for i in range(vocab)]
    cfg = llama_config(vocab, hidden, layers, heads, kv_heads, head_dim, dtype="float32")
    return write_model(folder, specs, cfg, tokens, shard_bytes)


def mlp_tensors(gates, ups) -> list:
    """``save_llama`` extras for MLP inputs ``gates``/``ups`` ``[L][d_ff, n]`` (and matching down projections)."""
    extra = []
    for i, (g, u) in enumerate(zip(gates, ups)):
        extra.append((f"model.layers.{i}.mlp.gate_proj.weight", g.shape, np.float32, (lambda a=g: a)))
        extra.append((f"model.layers.{i}.mlp.up_proj.weight", u.shape, np.float32, (lambda a=u: a)))
        extra.append((f"model.layers.{i}.mlp.down_proj.weight", u.shape[::-1], np.float32, (lambda a=u: a.T.copy())))
    return extra


def random_model(rng: np.random.Generator, vocab=200, hidden=64, layers=3, q_dim=64, k_dim=32):
    """Random Gaussian weights: ``(emb, qs, ks)``."""
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    qs = [rng.standard_normal((q_dim, hidden)).astype(np.float32) / np.sqrt(hidden) for _ in range(layers)]
    ks = [rng.standard_normal((k_dim, hidden)).astype(np.float32) / np.sqrt(hidden) for _ in range(layers)]
    return emb, qs, ks
