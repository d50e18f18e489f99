"""A small CPU trainer: optax AdamW, one jitted step, deterministic batches.

Every zoo model, base or derivative, is trained by :func:`train` with a loss function
``loss_fn(params, batch) -> (loss, metrics)``. :func:`causal_lm_loss` gives the next-token loss
(optionally masked to answer tokens, optionally with non-text features for the LLaVA variant and
the Mixtral load-balancing term); derivations supply their own losses (distillation, DPO).
Batches come from the seeded samplers of :mod:`awm_jax.zoo.data`, so a run is reproducible from
its seeds.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from awm_jax.zoo.model import ModelConfig, build_module

__all__ = [
    "TrainConfig",
    "report_progress",
    "make_optimizer",
    "causal_lm_loss",
    "sequence_logprobs",
    "train",
    "TrainResult",
]

Batch = dict[str, np.ndarray]
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule of one training run.

    Attributes:
        steps: number of optimiser steps.
        batch_size: sequences per step ``B``.
        seq_len: tokens per sequence ``T`` (targets; windows hold ``T + 1`` ids).
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up length.
        min_lr_ratio: final learning rate of the cosine decay, relative to the peak.
        weight_decay: AdamW decoupled weight decay (not applied to norm gains or biases).
        grad_clip: global-norm gradient clipping.
        data_seed: seed of the batch sampler.
    """

    steps: int
    batch_size: int = 16
    seq_len: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    data_seed: int = 0

    def replace(self, **changes: Any) -> "TrainConfig":
        """Returns a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def tokens(self) -> int:
        """Target tokens seen by the run (``steps * batch_size * seq_len``)."""
        return self.steps * self.batch_size * self.seq_len


ProgressFn = Callable[[int, int, float], None]
_PROGRESS: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar(
    "awm_zoo_train_progress", default=None
)


@contextlib.contextmanager
def report_progress(callback: ProgressFn) -> Iterator[None]:
    """Within the block, every :func:`train` step calls ``callback(step, steps, loss)``.

    Lets a caller (the zoo builder's progress bar) follow training runs started deep inside
    derivations without threading a callback through every function.
    """
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warm-up, cosine decay and global-norm clipping.

    Weight decay applies to matrices (ndim >= 2) only.
    """
    warmup = max(1, min(tc.warmup_steps, tc.steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=tc.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(tc.steps, warmup + 1),
        end_value=tc.learning_rate * tc.min_lr_ratio,
    )

    def decay_mask(params: Any) -> Any:
        return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=tc.weight_decay, mask=decay_mask),
    )


def _router_balance_loss(router_logits: list[jax.Array], k: int) -> jax.Array:
    """Switch/Mixtral load-balancing loss averaged over MoE layers.

    Args:
        router_logits: per layer ``[B, T, E]``.
        k: experts per token.

    Returns:
        Scalar ``E * sum_e f_e p_e`` (1.0 when perfectly balanced).
    """
    losses = []
    for logits in router_logits:
        e = logits.shape[-1]
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(-1, e)
        _, top_i = jax.lax.top_k(probs, k)
        chosen = jnp.sum(jax.nn.one_hot(top_i, e), axis=1)  # [N, E]
        frac = jnp.mean(chosen, axis=0) / k
        losses.append(e * jnp.sum(frac * jnp.mean(probs, axis=0)))
    return jnp.mean(jnp.stack(losses))


@functools.lru_cache(maxsize=64)
def causal_lm_loss(cfg: ModelConfig, router_aux_coef: float = 0.02) -> LossFn:
    """Next-token cross-entropy for ``cfg``'s model.

    The batch holds ``ids [B, T + 1]`` and optionally ``mask [B, T]`` (weights of the targets
    ``ids[:, 1:]``; answer-only SFT uses it) and ``feats [B, P, F]`` (LLaVA features placed
    before the text). For Mixtral configs the load-balancing loss times ``router_aux_coef`` is
    added.

    Returns:
        ``loss_fn(params, batch) -> (loss, {"ce": ..., "aux": ...})``; the same function
        object for equal arguments, so training runs of one config share compiled steps.
    """
    module = build_module(cfg)

    def loss_fn(params: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        ids = batch["ids"]
        inputs, targets = ids[:, :-1], ids[:, 1:]
        args = (inputs, batch["feats"]) if cfg.architecture == "llava" else (inputs,)
        if cfg.architecture == "mixtral":
            logits, state = module.apply({"params": params}, *args, mutable=["intermediates"])
        else:
            logits, state = module.apply({"params": params}, *args), {}
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        mask = batch.get("mask")
        if mask is None:
            ce = jnp.mean(nll)
        else:
            ce = jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        aux = jnp.float32(0.0)
        if cfg.architecture == "mixtral":
            sown = traverse_util.flatten_dict(state["intermediates"])
            logits_per_layer = [v[0] for k, v in sorted(sown.items()) if k[-1] == "router_logits"]
            aux = _router_balance_loss(logits_per_layer, cfg.num_experts_per_tok)
        return ce + router_aux_coef * aux, {"ce": ce, "aux": aux}

    return loss_fn


def sequence_logprobs(cfg: ModelConfig, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of the log-probabilities of the masked targets of each sequence.

    Args:
        cfg: model shapes.
        params: parameter tree.
        ids: ``[B, T + 1]`` token ids.
        mask: ``[B, T]`` weights of the targets ``ids[:, 1:]``.

    Returns:
        ``[B]`` float32.
    """
    logits = build_module(cfg).apply({"params": params}, ids[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(tok * mask, axis=-1)


_STEP_CACHE: dict[tuple, tuple[Callable, optax.GradientTransformation]] = {}


def _freeze_key(labels: Any) -> tuple | None:
    if labels is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(labels)
    return (str(treedef), tuple(leaves))


def _compiled_step(
    loss_fn: LossFn, tc: TrainConfig, freeze_key: tuple | None, labels: Any
) -> tuple[Callable, optax.GradientTransformation]:
    """One jitted AdamW step per (loss function, optimiser settings, frozen set).

    Runs that share a loss function object (:func:`causal_lm_loss` is cached per config) and
    settings reuse the compiled step; a new batch shape or parameter shape still retraces.
    """
    key = (loss_fn, tc, freeze_key)
    if key not in _STEP_CACHE:
        opt = make_optimizer(tc)
        if labels is not None:
            opt = optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)

        @jax.jit
        def step(p, s, batch):
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        if len(_STEP_CACHE) > 64:
            _STEP_CACHE.clear()
        _STEP_CACHE[key] = (step, opt)
    return _STEP_CACHE[key]


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        params: trained parameters (numpy arrays on the host).
        losses: loss of every step.
        seconds: wall time including compilation.
        tokens: target tokens processed (``steps * B * T`` for LM batches).
    """

    params: Any
    losses: list[float]
    seconds: float
    tokens: int

    def summary(self) -> dict[str, float]:
        """First/last loss (means over up to 10 steps; ``None`` without steps), time and
        tokens, JSON-ready."""
        k = max(1, min(10, len(self.losses) // 5 or 1))
        return {
            "loss_first": float(np.mean(self.losses[:k])) if self.losses else None,
            "loss_last": float(np.mean(self.losses[-k:])) if self.losses else None,
            "seconds": round(self.seconds, 2),
            "tokens": int(self.tokens),
            "steps": len(self.losses),
        }


def train(
    params: Any,
    loss_fn: LossFn,
    batches: Iterator[Batch],
    tc: TrainConfig,
    *,
    trainable: Callable[[str], bool] | None = None,
) -> TrainResult:
    """Runs ``tc.steps`` AdamW steps of ``loss_fn`` on ``batches``.

    Args:
        params: initial parameter tree.
        loss_fn: ``(params, batch) -> (loss, metrics)``; traced once.
        batches: iterator of numpy batches, all of one shape.
        tc: optimiser settings (``tc.steps`` is the step count).
        trainable: optional predicate on the ``"/"``-joined parameter path; parameters for
            which it is false receive zero updates.

    Returns:
        A :class:`TrainResult` with host (numpy) parameters.
    """
    labels = None
    if trainable is not None:
        labels = jax.tree_util.tree_map_with_path(
            lambda path, _: "train"
            if trainable("/".join(str(getattr(k, "key", k)) for k in path))
            else "freeze",
            params,
        )
    step, opt = _compiled_step(loss_fn, tc.replace(data_seed=0), _freeze_key(labels), labels)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = opt.init(params)

    progress = _PROGRESS.get()
    start = time.perf_counter()
    losses: list[float] = []
    tokens = 0
    for i in range(tc.steps):
        batch = next(batches)
        if "ids" in batch:
            tokens += int(batch["ids"].shape[0] * (batch["ids"].shape[1] - 1))
        # optax's Adam raises a float decay to an int32 step count, which needs standard
        # dtype promotion; the zoo's own code is strict-promotion clean.
        with jax.numpy_dtype_promotion("standard"):
            params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
        if progress is not None:
            progress(i + 1, tc.steps, losses[-1])
    if losses and not np.isfinite(losses[-1]):
        raise FloatingPointError(f"training diverged: final loss {losses[-1]}")
    host = jax.tree_util.tree_map(np.asarray, params)
    return TrainResult(host, losses, time.perf_counter() - start, tokens)
