"""Rival lineage signals, implemented from their papers' definitions, for the lineage benchmark.

Each takes two model folders and returns one score (higher = more likely related), or NaN where
the signal is undefined for the pair (a method that cannot score a pair gives no evidence; the
benchmark counts NaN as 0).

* ``pcs``: parameter cosine similarity: the cosine between the concatenated Q/K weights of the
  two models, over layers of identical shape (HuRef's PCS baseline). Undefined across shapes.
* ``ics``: HuRef's invariant terms: per layer ``X Wq^T Wk X^T`` over the embeddings ``X`` of a
  fixed set of shared tokens (grouped-query heads expanded), cosine between the models' terms,
  averaged over the layers paired by relative depth. Invariant to residual permutations and
  rotations and to Q/K scaling.
* ``std_profile``: the intrinsic-fingerprint signal: the per-layer standard deviations of Wq and
  Wk form a profile; the score is the Pearson correlation of the two profiles (the shorter one
  interpolated to the longer depth).
* ``cka_unaligned``: unbiased CKA of the Q/K Grams without the embedding assignment (identity
  correspondence of hidden dimensions), equal hidden sizes only.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import jax.numpy as jnp
import numpy as np

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.numerics.kernels import gram, unbiased_cka
from awm_jax.layouts import detect
from awm_jax.io.vocab import load_vocabulary, shared_rows

__all__ = ["RIVALS", "pcs", "ics", "std_profile", "cka_unaligned"]

ICS_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class _Weights:
    emb: np.ndarray
    q: tuple
    k: tuple
    heads: int
    kv_heads: int
    vocab: object


@lru_cache(maxsize=64)
def _load(path: str) -> _Weights:
    r = detect(Checkpoint(path))
    qk = [r.read_qk(i) for i in range(r.num_layers)]
    dims = r.dims
    heads = dims.heads if dims else 1
    kv = dims.kv_heads if dims else 1
    return _Weights(np.asarray(r.read_embedding(), np.float32), tuple(q for q, _ in qk), tuple(k for _, k in qk),
                    heads, kv, load_vocabulary(path))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def pcs(a: str, b: str) -> float:
    wa, wb = _load(str(a)), _load(str(b))
    xs, ys = [], []
    for qa, qb, ka, kb in zip(wa.q, wb.q, wa.k, wb.k):
        if qa.shape == qb.shape and ka.shape == kb.shape:
            xs += [qa.ravel(), ka.ravel()]
            ys += [qb.ravel(), kb.ravel()]
    if not xs:
        return float("nan")
    return _cos(np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64))


def _qk_product(q: np.ndarray, k: np.ndarray, heads: int, kv: int) -> np.ndarray:
    """``sum_h Wq_h^T Wk_{g(h)}``, ``[n, n]``: the bilinear form of the attention logits."""
    hd = q.shape[0] // heads
    qh = q.reshape(heads, hd, -1)
    kh = np.repeat(k.reshape(kv, hd, -1), heads // kv, axis=0)
    return np.einsum("hdn,hdm->nm", qh, kh)


def _depth_pairs(la: int, lb: int) -> list[tuple[int, int]]:
    short, long_ = (la, lb) if la <= lb else (lb, la)
    idx = [round(i * (long_ - 1) / max(short - 1, 1)) for i in range(short)]
    return [(i, j) for i, j in zip(range(short), idx)] if la <= lb else [(j, i) for i, j in zip(range(short), idx)]


def ics(a: str, b: str) -> float:
    wa, wb = _load(str(a)), _load(str(b))
    s = shared_rows(wa.vocab, wb.vocab, wa.emb.shape[0], wb.emb.shape[0])
    pick = np.linspace(0, len(s) - 1, min(ICS_TOKENS, len(s))).astype(int)
    xa, xb = wa.emb[s.ids_a[pick]], wb.emb[s.ids_b[pick]]
    scores = []
    for i, j in _depth_pairs(len(wa.q), len(wb.q)):
        ta = xa @ _qk_product(wa.q[i], wa.k[i], wa.heads, wa.kv_heads) @ xa.T
        tb = xb @ _qk_product(wb.q[j], wb.k[j], wb.heads, wb.kv_heads) @ xb.T
        scores.append(_cos(ta.ravel().astype(np.float64), tb.ravel().astype(np.float64)))
    return float(np.mean(scores))


def std_profile(a: str, b: str) -> float:
    wa, wb = _load(str(a)), _load(str(b))
    pa = np.array([[q.std(), k.std()] for q, k in zip(wa.q, wa.k)])
    pb = np.array([[q.std(), k.std()] for q, k in zip(wb.q, wb.k)])
    if len(pa) != len(pb):
        n = max(len(pa), len(pb))
        grid = np.linspace(0, 1, n)
        pa = np.stack([np.interp(grid, np.linspace(0, 1, len(pa)), pa[:, c]) for c in range(2)], 1)
        pb = np.stack([np.interp(grid, np.linspace(0, 1, len(pb)), pb[:, c]) for c in range(2)], 1)
    x, y = pa.ravel(), pb.ravel()
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def cka_unaligned(a: str, b: str) -> float:
    wa, wb = _load(str(a)), _load(str(b))
    if wa.emb.shape[1] != wb.emb.shape[1]:
        return float("nan")
    scores = []
    for i, j in _depth_pairs(len(wa.q), len(wb.q)):
        for x, y in ((wa.q[i], wb.q[j]), (wa.k[i], wb.k[j])):
            scores.append(float(unbiased_cka(gram(jnp.asarray(x)), gram(jnp.asarray(y)))))
    return float(np.mean(scores))


RIVALS = {"pcs": pcs, "ics": ics, "std_profile": std_profile, "cka_unaligned": cka_unaligned}
