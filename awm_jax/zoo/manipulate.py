"""Function-preserving weight manipulations of zoo checkpoints.

Every function here takes a config and a Hugging Face state dict (name -> float32 array) and
returns a new state dict whose model computes the same logits (up to float rounding):

* :func:`scale_qk`: ``Wq`` rows of a key/value group times ``c``, the group's ``Wk`` rows over
  ``c``; attention scores ``q . k`` are unchanged. With one ``c`` per layer this is an
  isotropic scaling of the layer's Q and K features (linear CKA is invariant to it); with one
  ``c`` per key/value group it is anisotropic (function-preserving, but CKA is not invariant).
* :func:`rotate_rope_pairs`: per key/value group and rotary frequency ``i``, one 2x2 rotation in
  the plane of head dimensions ``(i, i + d/2)`` applied to the rows of ``Wq`` (all query heads
  of the group) and ``Wk`` (the group's key head). Rotary embedding rotates exactly these
  planes, and plane rotations commute, so ``q_m . k_n`` is unchanged.
* :func:`fold_norm_gains` alone (``norm-fold``): every RMSNorm gain multiplied into the
  matrices reading its output, the gains set to 1 (function-preserving).
* :func:`quantize_roundtrip` (``quant-int4``): not function-preserving but close to it: the
  weights of a 4-bit round-to-nearest release, dequantised.
* :func:`transform_residual`: ``x -> x R`` on the residual stream for an orthogonal ``R``. Every
  matrix that writes the residual (embedding, ``o_proj``, ``down_proj``, experts' ``w2``,
  the projector's ``linear_2`` and its bias) and every matrix that reads a normalised residual
  (``q/k/v_proj``, ``gate/up_proj``, router, experts' ``w1/w3``, ``lm_head``) is multiplied by
  ``R`` on its residual axis. RMSNorm commutes with ``R`` only where its gain commutes:
  for a signed permutation ``R = P S`` the gains are permuted (never sign-flipped: the signs
  cancel between writer and reader); for a dense ``R`` the gains must be 1, which
  :func:`fold_norm_gains` arranges by multiplying them into the reading matrices first
  (SliceGPT / QuaRot "computational invariance").

:data:`MANIPULATIONS` names seeded recipes built from these, including combinations.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from awm_jax.zoo.model import ModelConfig

__all__ = [
    "scale_qk",
    "rotate_rope_pairs",
    "fold_norm_gains",
    "quantize_roundtrip",
    "transform_residual",
    "random_signed_permutation",
    "random_orthogonal",
    "APPROXIMATE",
    "MANIPULATIONS",
    "RECIPE_VERSION",
    "manipulate",
]

State = dict[str, np.ndarray]

_PREFIX = r"^(?:language_model\.)?"
_READERS = re.compile(
    _PREFIX
    + r"(?:model\.layers\.\d+\.(?:self_attn\.[qkv]_proj|mlp\.(?:gate|up)_proj"
    r"|block_sparse_moe\.gate|block_sparse_moe\.experts\.\d+\.w[13])|lm_head)\.weight$"
)
_WRITERS = re.compile(
    _PREFIX + r"model\.layers\.\d+\.(?:self_attn\.o_proj|mlp\.down_proj"
    r"|block_sparse_moe\.experts\.\d+\.w2)\.weight$"
    r"|^multi_modal_projector\.linear_2\.(?:weight|bias)$"
)
_EMBED = re.compile(_PREFIX + r"model\.embed_tokens\.weight$")
_GAINS = re.compile(
    _PREFIX + r"model\.(?:layers\.\d+\.(?:input|post_attention)_layernorm|norm)\.weight$"
)
_UNTOUCHED = re.compile(r"^multi_modal_projector\.linear_1\.(?:weight|bias)$")


def _prefix(cfg: ModelConfig) -> str:
    return "language_model." if cfg.architecture == "llava" else ""


def _residual_axis(name: str) -> int | None:
    """Axis of ``name`` that indexes the residual stream (None: gain or untouched)."""
    if _EMBED.match(name) or _READERS.match(name):
        return -1
    if _WRITERS.match(name):
        return 0
    if _GAINS.match(name) or _UNTOUCHED.match(name):
        return None
    raise ValueError(f"tensor {name!r} has no known residual role; cannot transform it")


def _group_rows(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """KV group of each row of ``Wq`` ``[H d]`` and of ``Wk`` ``[K d]``."""
    d, h, k = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    q_group = np.repeat(np.arange(h) // (h // k), d)
    k_group = np.repeat(np.arange(k), d)
    return q_group, k_group


def scale_qk(cfg: ModelConfig, state: State, scale: float | np.ndarray) -> State:
    """Scales ``Wq`` by ``c`` and ``Wk`` by ``1 / c`` in every layer.

    Args:
        cfg: model shapes.
        state: state dict.
        scale: a scalar ``c``, or ``[L, K]`` factors (layer, key/value group).

    Returns:
        The manipulated state dict (other tensors shared with ``state``).
    """
    l, k = cfg.num_hidden_layers, cfg.num_key_value_heads
    c = np.broadcast_to(np.asarray(scale, np.float64), (l, k))
    if np.any(c == 0) or not np.all(np.isfinite(c)):
        raise ValueError("scale factors must be finite and non-zero")
    q_group, k_group = _group_rows(cfg)
    out = dict(state)
    pre = _prefix(cfg)
    for i in range(l):
        qn, kn = f"{pre}model.layers.{i}.self_attn.q_proj.weight", f"{pre}model.layers.{i}.self_attn.k_proj.weight"
        out[qn] = (state[qn] * c[i, q_group][:, None]).astype(np.float32)
        out[kn] = (state[kn] / c[i, k_group][:, None]).astype(np.float32)
    return out


def rotate_rope_pairs(cfg: ModelConfig, state: State, angles: np.ndarray) -> State:
    """Rotates each rotary plane ``(i, i + d/2)`` of ``Wq`` and ``Wk`` rows per key/value group.

    Args:
        cfg: model shapes.
        state: state dict.
        angles: ``[L, K, d/2]`` rotation angles (layer, key/value group, frequency).

    Returns:
        The manipulated state dict.
    """
    l, k, d = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    angles = np.asarray(angles, np.float64)
    if angles.shape != (l, k, d // 2):
        raise ValueError(f"angles must have shape {(l, k, d // 2)}, got {angles.shape}")
    group = cfg.num_attention_heads // k
    out = dict(state)
    pre = _prefix(cfg)

    def rotate(w: np.ndarray, heads: int, head_group: np.ndarray, phi: np.ndarray) -> np.ndarray:
        w = w.astype(np.float64).reshape(heads, 2, d // 2, -1)  # [heads, half, freq, n]
        cos = np.cos(phi[head_group])[:, :, None]  # [heads, freq, 1]
        sin = np.sin(phi[head_group])[:, :, None]
        a, b = w[:, 0], w[:, 1]
        new = np.stack([cos * a - sin * b, sin * a + cos * b], axis=1)
        return new.reshape(heads * d, -1).astype(np.float32)

    for i in range(l):
        qn = f"{pre}model.layers.{i}.self_attn.q_proj.weight"
        kn = f"{pre}model.layers.{i}.self_attn.k_proj.weight"
        h = cfg.num_attention_heads
        out[qn] = rotate(state[qn], h, np.arange(h) // group, angles[i])
        out[kn] = rotate(state[kn], k, np.arange(k), angles[i])
    return out


def _readers_of_norm(cfg: ModelConfig, state: State) -> dict[str, list[str]]:
    """Gain tensor name -> names of the matrices reading its output."""
    pre = _prefix(cfg)
    plan: dict[str, list[str]] = {f"{pre}model.norm.weight": [f"{pre}lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        lp = f"{pre}model.layers.{i}."
        plan[lp + "input_layernorm.weight"] = [lp + f"self_attn.{p}_proj.weight" for p in "qkv"]
        plan[lp + "post_attention_layernorm.weight"] = [
            name for name in state
            if name.startswith(lp) and (
                name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight",
                               "block_sparse_moe.gate.weight"))
                or re.search(r"experts\.\d+\.w[13]\.weight$", name)
            )
        ]
    return plan


def fold_norm_gains(cfg: ModelConfig, state: State) -> State:
    """Multiplies every RMSNorm gain into the matrices reading it and sets the gain to 1.

    Returns:
        The state dict of the same function with all gains equal to 1.
    """
    out = dict(state)
    for gain_name, readers in _readers_of_norm(cfg, state).items():
        g = state[gain_name].astype(np.float64)
        for r in readers:
            out[r] = (state[r].astype(np.float64) * g[None, :]).astype(np.float32)
        out[gain_name] = np.ones_like(state[gain_name])
    return out


def _signed_permutation(r: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(perm, signs)`` if ``r`` is a signed permutation matrix (``R[perm[j], j] = s_j``)."""
    nz = np.abs(r) > 0
    if not (np.all(nz.sum(axis=0) == 1) and np.all(nz.sum(axis=1) == 1)):
        return None
    perm = np.argmax(nz, axis=0)
    signs = r[perm, np.arange(r.shape[1])]
    if not np.all(np.abs(signs) == 1):
        return None
    return perm, signs


def transform_residual(cfg: ModelConfig, state: State, r: np.ndarray, atol: float = 1e-6) -> State:
    """Changes the residual basis ``x -> x R`` of the whole model.

    Args:
        cfg: model shapes.
        state: state dict.
        r: ``[n, n]`` orthogonal matrix. A signed permutation is applied exactly by indexing
            and permutes the RMSNorm gains; any other orthogonal matrix requires all gains to
            be 1 (call :func:`fold_norm_gains` first).
        atol: tolerance of the orthogonality and unit-gain checks.

    Returns:
        The manipulated state dict.

    Raises:
        ValueError: ``r`` is not orthogonal, or a dense ``r`` meets a gain that is not 1.
    """
    n = cfg.hidden_size
    r = np.asarray(r, np.float64)
    if r.shape != (n, n) or not np.allclose(r.T @ r, np.eye(n), atol=atol):
        raise ValueError(f"r must be an orthogonal {n}x{n} matrix")
    signed = _signed_permutation(r)
    out: State = {}
    for name, w in state.items():
        if _GAINS.match(name):
            if signed is not None:
                out[name] = w[signed[0]].copy()
            elif not np.allclose(w, 1.0, atol=atol):
                raise ValueError(
                    f"{name} is not 1: a dense residual rotation needs folded norm gains; "
                    "call fold_norm_gains first"
                )
            else:
                out[name] = w.copy()
            continue
        axis = _residual_axis(name)
        if axis is None:
            out[name] = w
            continue
        moved = np.moveaxis(w, axis, -1)
        if signed is not None:
            perm, signs = signed
            new = moved[..., perm] * signs.astype(np.float32)
        else:
            new = (moved.astype(np.float64) @ r).astype(np.float32)
        out[name] = np.ascontiguousarray(np.moveaxis(new, -1, axis))
    return out


def random_signed_permutation(n: int, seed: int) -> np.ndarray:
    """A seeded ``[n, n]`` signed permutation matrix ``R[perm[j], j] = s_j``."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    signs = rng.choice(np.array([-1.0, 1.0]), size=n)
    r = np.zeros((n, n))
    r[perm, np.arange(n)] = signs
    return r


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A seeded Haar-random ``[n, n]`` orthogonal matrix (QR with sign correction)."""
    rng = np.random.default_rng(seed)
    q, rr = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(rr))[None, :]


def _random_scales(cfg: ModelConfig, rng: np.random.Generator, per_group: bool) -> np.ndarray:
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads if per_group else 1)
    c = np.exp(rng.uniform(np.log(0.25), np.log(4.0), shape))
    return np.broadcast_to(c, (cfg.num_hidden_layers, cfg.num_key_value_heads))


def _random_angles(cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim // 2)
    return rng.uniform(-np.pi, np.pi, shape)


def _qk_scale(cfg: ModelConfig, s: State, seed: int) -> State:
    return scale_qk(cfg, s, _random_scales(cfg, np.random.default_rng(seed), per_group=False))


def _qk_scale_groups(cfg: ModelConfig, s: State, seed: int) -> State:
    return scale_qk(cfg, s, _random_scales(cfg, np.random.default_rng(seed), per_group=True))


def _rope_rotation(cfg: ModelConfig, s: State, seed: int) -> State:
    return rotate_rope_pairs(cfg, s, _random_angles(cfg, np.random.default_rng(seed)))


def _perm_sign(cfg: ModelConfig, s: State, seed: int) -> State:
    return transform_residual(cfg, s, random_signed_permutation(cfg.hidden_size, seed))


def _dense_rotation(cfg: ModelConfig, s: State, seed: int) -> State:
    return transform_residual(cfg, fold_norm_gains(cfg, s), random_orthogonal(cfg.hidden_size, seed))


def _norm_fold(cfg: ModelConfig, s: State, seed: int) -> State:
    return fold_norm_gains(cfg, s)


def quantize_roundtrip(state: State, bits: int = 4, group: int = 32) -> State:
    """Every matrix through a round-to-nearest, symmetric, group-wise integer quantisation and
    back (what a 4-bit release does to the weights; the function changes by the rounding only).

    Args:
        state: state dict.
        bits: bits per weight (signed levels ``-(2^(bits-1) - 1) .. 2^(bits-1) - 1``).
        group: consecutive input columns sharing one scale (``absmax / levels``).
    """
    levels = 2 ** (bits - 1) - 1
    out = dict(state)
    for name, w in state.items():
        if w.ndim != 2 or w.shape[1] % group:
            continue
        g = w.astype(np.float64).reshape(w.shape[0], -1, group)
        scale = np.abs(g).max(axis=-1, keepdims=True) / levels
        q = np.round(np.divide(g, scale, out=np.zeros_like(g), where=scale > 0))
        out[name] = (q * scale).reshape(w.shape).astype(np.float32)
    return out


def _quant_int4(cfg: ModelConfig, s: State, seed: int) -> State:
    return quantize_roundtrip(s, bits=4, group=32)


def _combo(cfg: ModelConfig, s: State, seed: int) -> State:
    s = _qk_scale(cfg, s, seed)
    s = _rope_rotation(cfg, s, seed + 1)
    return _perm_sign(cfg, s, seed + 2)


def _combo_dense(cfg: ModelConfig, s: State, seed: int) -> State:
    return _dense_rotation(cfg, _combo(cfg, s, seed), seed + 3)


#: Version of the seeded recipes below; part of a built manipulation's fingerprint, so a change
#: of what a recipe draws rebuilds the manipulated models.
RECIPE_VERSION = 2

#: Seeded manipulation recipes: name -> ``fn(cfg, state, seed) -> state``.
MANIPULATIONS: dict[str, Callable[[ModelConfig, State, int], State]] = {
    "qk-scale": _qk_scale,
    "qk-scale-groups": _qk_scale_groups,
    "rope-rotation": _rope_rotation,
    "perm-sign": _perm_sign,
    "dense-rotation": _dense_rotation,
    "combo": _combo,
    "combo-dense": _combo_dense,
    "norm-fold": _norm_fold,
    "quant-int4": _quant_int4,
}


#: Recipes that change the function by rounding only (a quantised release), not exactly.
APPROXIMATE = frozenset({"quant-int4"})


def manipulate(kind: str, cfg: ModelConfig, state: State, seed: int) -> State:
    """Applies the named recipe of :data:`MANIPULATIONS`.

    Args:
        kind: ``"qk-scale"`` (one factor per layer), ``"qk-scale-groups"`` (one factor per
            layer and key/value group), ``"rope-rotation"``, ``"perm-sign"``,
            ``"dense-rotation"``, ``"combo"`` (``qk-scale``, ``rope-rotation`` and
            ``perm-sign`` together), ``"combo-dense"`` (those and ``dense-rotation``),
            ``"norm-fold"`` (gains folded, nothing else) or ``"quant-int4"`` (a 4-bit round trip).
        cfg: model shapes (unchanged by every manipulation).
        state: state dict.
        seed: seed of the random factors, angles, permutation or rotation.

    Returns:
        The manipulated state dict.
    """
    try:
        fn = MANIPULATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown manipulation {kind!r}; known: {sorted(MANIPULATIONS)}") from None
    return fn(cfg, state, seed)
