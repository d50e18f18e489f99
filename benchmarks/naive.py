"""A straightforward AWM implementation, for speed and memory ratios only.

Whole models in memory (embedding and every Q/K as float32), the column cosine as one matmul,
one Gram per layer and explicit unbiased centering, all in numpy. Equal depths only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import detect
from awm_jax.io.vocab import load_vocabulary, shared_rows

__all__ = ["naive_compare"]


def _load(path):
    r = detect(Checkpoint(path))
    emb = r.read_embedding().astype(np.float32)
    qk = [r.read_qk(i) for i in range(r.num_layers)]
    return load_vocabulary(path), emb, [q for q, _ in qk], [k for _, k in qk]


def _center(k):
    n = k.shape[0]
    k = k.copy()
    np.fill_diagonal(k, 0)
    m = k.sum(0) / (n - 2)
    m -= m.sum() / (2 * (n - 1))
    kc = k - m[None, :] - m[:, None]
    np.fill_diagonal(kc, 0)
    return kc


def _cka(x, y):
    kc, lc = _center(x @ x.T), _center(y @ y.T)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def naive_compare(path_a, path_b) -> dict:
    va, ea, qa, ka = _load(path_a)
    vb, eb, qb, kb = _load(path_b)
    if ea.shape[1] < eb.shape[1]:
        (va, ea, qa, ka), (vb, eb, qb, kb) = (vb, eb, qb, kb), (va, ea, qa, ka)
    s = shared_rows(va, vb, ea.shape[0], eb.shape[0])
    xb, xt = ea[s.ids_a], eb[s.ids_b]
    cos = (xb / np.linalg.norm(xb, axis=0)).T @ (xt / np.linalg.norm(xt, axis=0))
    rows, cols = linear_sum_assignment(1 - np.abs(cos))
    perm = np.empty(cos.shape[1], int)
    perm[cols] = rows
    signs = np.where(cos[perm, np.arange(cos.shape[1])] < 0, -1.0, 1.0).astype(np.float32)
    wq = [_cka((q[:, perm] * signs).T, t.T) for q, t in zip(qa, qb)]
    wk = [_cka((k[:, perm] * signs).T, t.T) for k, t in zip(ka, kb)]
    return {"wq": float(np.mean(wq)), "wk": float(np.mean(wk)), "mean": float((np.mean(wq) + np.mean(wk)) / 2)}
