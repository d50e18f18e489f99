"""Making, writing and reading AWM sketches (the record is :class:`awm_jax.engine.sketch.Sketch`).

A sketch of a model with hidden size ``n``, ``L`` layers and ``V`` embedding rows keeps:

* **tokens**: the ``K = min(V, max(SKETCH_TOKENS, n))`` tokens (within the embedding rows) whose
  UTF-8 token strings have the smallest SHA-256 digests: a min-hash selection, so two
  vocabularies that share tokens select mostly the same strings, whatever their ids (at least
  ``n`` rows, so a rotation of the residual stream stays identifiable from them);
* **embedding**: those tokens' rows, restricted to the retained dimensions ``D``;
* **Grams**: every layer's Q and K Gram restricted to ``D`` (``K_l[D, D]``), upper triangle only;
* ``D``: ``m`` evenly spaced dimensions ``floor(i n / m)``; ``m = n`` for ``n <= FULL_DIMS``
  (small models: the sketch is exact up to the token subset), else the largest
  multiple of 64 whose sketch fits ``BUDGET_FRACTION`` of the model's ``E`` + ``Q/K`` bytes
  (at least ``MIN_DIMS``).

Stored in one safetensors file (no pickle): float16 tensors (float32 when every dimension is
kept: small models, where size is no concern), each Gram and the embedding block scaled by a
power of two to a max-abs <= 1 (exact to undo; the exponents are stored), the token strings and
versions in the JSON metadata. :func:`decode_sketch` verifies what it reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import numpy as np

from awm_jax._version import ALGORITHM_VERSION
from awm_jax.engine.models import PreparedModel, read_embedding
from awm_jax.engine.sketch import Sketch
from awm_jax.errors import CacheError, NumericalError
from awm_jax.fingerprint._packed import pack_upper, unpack_upper
from awm_jax.fingerprint.grams import aligned_empty

__all__ = [
    "BUDGET_FRACTION",
    "FULL_DIMS",
    "MIN_DIMS",
    "SKETCH_FORMAT",
    "SKETCH_TOKENS",
    "SKETCH_VERSION",
    "SketchPlan",
    "make_sketch",
    "model_bytes",
    "plan_sketch",
    "decode_sketch",
    "encode_sketch",
    "retained_dims",
    "select_tokens",
    "sketch_bytes",
    "sketch_digest",
]

#: Bumped whenever a change alters what a sketch holds; a sketch records it with ``ALGORITHM_VERSION``.
SKETCH_VERSION = "awm-sketch-1"
SKETCH_FORMAT = "awm_jax.sketch"
#: Tokens whose embedding rows a sketch keeps (at most).
SKETCH_TOKENS = 2048
#: Models this wide or narrower keep every dimension.
FULL_DIMS = 512
#: Fewest dimensions a wider model's sketch keeps.
MIN_DIMS = 256
#: A sketch's size target, as a fraction of the model's embedding + Q/K bytes (for models wider than ``FULL_DIMS``).
BUDGET_FRACTION = 0.02


@dataclasses.dataclass(frozen=True)
class SketchPlan:
    """How much of a model a sketch keeps.

    Attributes:
      tokens: ``K``.
      dims: ``m``.
      model_bytes: the model's embedding + Q/K bytes as stored.
      sketch_bytes: the sketch's tensor bytes (the file adds its header).
    """

    tokens: int
    dims: int
    model_bytes: int
    sketch_bytes: int


def model_bytes(n: int, layers: int, rows: int, q_dim: int, k_dim: int, itemsize: int) -> int:
    """Bytes of a model's embedding and Q/K projections as stored."""
    return itemsize * (rows * n + layers * (q_dim + k_dim) * n)


def sketch_bytes(tokens: int, dims: int, layers: int, itemsize: int = 2) -> int:
    """Tensor bytes of a sketch: embedding rows and two Gram triangles per layer (``itemsize``
    bytes a value: 2 for float16, 4 when every dimension is kept), plus ``D``."""
    return itemsize * (tokens * dims + 2 * layers * dims * (dims + 1) // 2) + 4 * dims


def plan_sketch(n: int, layers: int, rows: int, q_dim: int, k_dim: int, itemsize: int) -> SketchPlan:
    """``K`` and ``m`` for a model of these shapes (see the module docstring)."""
    tokens = min(rows, max(SKETCH_TOKENS, n))
    size = model_bytes(n, layers, rows, q_dim, k_dim, itemsize)
    if n <= FULL_DIMS:
        dims = n
    else:
        budget = BUDGET_FRACTION * size
        dims = MIN_DIMS
        while dims + 64 <= n and sketch_bytes(tokens, dims + 64, layers) <= budget:
            dims += 64
        dims = min(dims, n)
    return SketchPlan(tokens, dims, size, sketch_bytes(tokens, dims, layers, 4 if dims == n else 2))


def retained_dims(n: int, m: int) -> np.ndarray:
    """``D``: ``m`` evenly spaced dimensions of ``n``, ``floor(i n / m)`` (all of them when ``m = n``)."""
    return (np.arange(m, dtype=np.int64) * n // m).astype(np.int32)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def select_tokens(tokens: dict[str, int], rows: int, count: int) -> list[str]:
    """The ``count`` tokens (ids below ``rows``) with the smallest SHA-256 of their UTF-8 string."""
    usable = [t for t, i in tokens.items() if 0 <= i < rows]
    return sorted(usable, key=_digest)[:count]


def _restricted(model: PreparedModel, dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[L, m, m]`` Q and K Grams of the model restricted to ``D``."""
    q, k = model.grams.gather(dims)
    return q, k


def make_sketch(model: PreparedModel, name: str = "", *, dims: int | None = None,
                tokens: int | None = None) -> tuple[Sketch, SketchPlan]:
    """The sketch of a prepared model and its plan.

    Args:
      model: the prepared model.
      name: its identifier, recorded in the sketch.
      dims: keep this many dimensions instead of the planned ``m`` (tests and benchmarks).
      tokens: keep this many tokens instead of the planned ``K`` (tests and benchmarks).

    Raises:
      NumericalError: the embedding rows or Grams kept are not finite.
    """
    r = model.resolved
    itemsize = np.dtype(read_embedding(r).dtype).itemsize
    plan = plan_sketch(r.hidden_size, r.num_layers, r.vocab_rows, r.q_dim, r.k_dim, itemsize)
    if dims is not None or tokens is not None:
        count, width = min(tokens or plan.tokens, r.vocab_rows), min(dims or plan.dims, r.hidden_size)
        plan = dataclasses.replace(plan, tokens=count, dims=width, sketch_bytes=sketch_bytes(count, width, r.num_layers,
                                                                                   4 if width == r.hidden_size else 2))
    retained = retained_dims(r.hidden_size, plan.dims)
    kept = select_tokens(dict(model.vocab.tokens), r.vocab_rows, plan.tokens)
    ids = np.asarray([model.vocab.tokens[t] for t in kept], np.int64)
    emb = np.asarray(read_embedding(r)[ids], np.float32)[:, retained]
    q, k = _restricted(model, retained)
    for what, x in (("embedding rows", emb), ("query Grams", q), ("key Grams", k)):
        if not np.isfinite(x).all():
            raise NumericalError(f"{model.path}: the sketch's {what} hold NaN/Inf; the weights are damaged")
    return Sketch(tuple(kept), emb, retained, q, k, r.hidden_size, name or model.path), plan


# --- the file ------------------------------------------------------------------------------------


def _scaled(x: np.ndarray, axes: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray]:
    """``x / 2^e`` as ``dtype`` with ``e`` (over ``axes``' max-abs) making every value <= 1 (exact to undo)."""
    peak = np.max(np.abs(x), axis=axes, keepdims=True)
    exp = np.where(peak > 0, np.ceil(np.log2(np.where(peak > 0, peak, 1.0))), 0.0)
    return (x / np.exp2(exp)).astype(dtype), exp.reshape(-1).astype(np.int32)


def _full(tri: np.ndarray, m: int) -> np.ndarray:
    """``[L, m(m+1)/2]`` packed upper triangles -> ``[L, m, m]`` symmetric float32, in an aligned
    buffer (the kernels take it without a copy)."""
    out = aligned_empty((tri.shape[0], m, m))
    unpack_upper(tri, out)
    return out


def encode_sketch(sketch: Sketch) -> bytes:
    """The bytes of ``sketch``'s file (safetensors, JSON metadata): float16 tensors, or float32
    when the sketch keeps every dimension (small models: the sketch is then exact)."""
    from safetensors.numpy import save

    dtype = np.float32 if sketch.m == sketch.hidden_size else np.float16
    emb, emb_exp = _scaled(sketch.embedding, (0, 1), dtype)
    tensors = {"embedding": emb, "embedding_exp": emb_exp, "dims": sketch.dims.astype(np.int32)}
    for label, g in (("q", sketch.q), ("k", sketch.k)):
        tensors[label], tensors[f"{label}_exp"] = _scaled(pack_upper(g), (1,), dtype)
    meta = {"format": SKETCH_FORMAT, "sketch_version": SKETCH_VERSION, "algorithm": ALGORITHM_VERSION,
            "hidden_size": str(sketch.hidden_size), "num_layers": str(sketch.num_layers), "name": sketch.name,
            "tokens": json.dumps(list(sketch.tokens))}
    # safetensors writes an array's memory as it lies: every tensor C-contiguous first (the
    # triangles come out of advanced indexing in another order).
    return save({key: np.ascontiguousarray(x) for key, x in tensors.items()}, metadata=meta)


def _refuse(where: str, what: str) -> CacheError:
    return CacheError(f"{where}: {what}; the catalogue entry is damaged: build or fetch the catalogue again")


def decode_sketch(data: bytes, where: str) -> Sketch:
    """Parses and checks a sketch file's bytes (format, versions, shapes, finite values).

    Raises:
      CacheError: anything wrong with it (one line naming ``where``).
    """
    from safetensors.numpy import load

    try:
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + size])["__metadata__"]
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure of a stranger's file is one refusal
        raise _refuse(where, f"not a readable sketch file ({type(e).__name__})") from None
    if meta.get("format") != SKETCH_FORMAT:
        raise _refuse(where, "not an awm_jax sketch")
    if meta.get("sketch_version") != SKETCH_VERSION or meta.get("algorithm") != ALGORITHM_VERSION:
        raise CacheError(f"{where}: sketch version {meta.get('sketch_version')}/{meta.get('algorithm')}, this awm_jax "
                         f"reads {SKETCH_VERSION}/{ALGORITHM_VERSION}; build the catalogue again with this version")
    try:
        tokens = tuple(json.loads(meta["tokens"]))
        n, layers = int(meta["hidden_size"]), int(meta["num_layers"])
        dims = tensors["dims"].astype(np.int64)
        m = dims.size
        emb = tensors["embedding"].astype(np.float32) * np.exp2(float(tensors["embedding_exp"][0]))
        grams = []
        for label in ("q", "k"):
            tri, exp = tensors[label], tensors[f"{label}_exp"]
            if tri.shape != (layers, m * (m + 1) // 2) or exp.shape != (layers,):
                raise ValueError(label)
            tri = tri.astype(np.float32)
            tri *= np.exp2(exp.astype(np.float32))[:, None]
            grams.append(tri)
    except (KeyError, ValueError, TypeError, IndexError):
        raise _refuse(where, "inconsistent sketch tensors") from None
    ok = (all(isinstance(t, str) for t in tokens) and emb.shape == (len(tokens), m) and m >= 4 and m <= n
          and np.all(np.diff(dims) > 0) and dims[0] >= 0 and dims[-1] < n and layers >= 1)
    if not ok:
        raise _refuse(where, "inconsistent sketch shapes")
    if not (np.isfinite(emb).all() and all(np.isfinite(tri).all() for tri in grams)):  # the triangles: half the values
        raise _refuse(where, "non-finite values")
    q, k = (_full(tri, m) for tri in grams)
    return Sketch(tokens, emb, dims.astype(np.int32), q, k, n, str(meta.get("name", "")))


def sketch_digest(data: bytes) -> str:
    """SHA-256 of a sketch file's bytes (hex)."""
    return hashlib.sha256(data).hexdigest()

