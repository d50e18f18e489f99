"""Norm gains folded into the Grams: ``diag(g) W^T W diag(g)`` equals the Gram of ``W diag(g)``,
whatever the gains' float range, and stored bf16 weights keep the CPU's bf16 route."""

import ml_dtypes
import numpy as np
import pytest

from awm_jax.engine.models import open_checkpoint
from awm_jax.fingerprint.grams import fold_into_gram, layer_matrices, model_grams
from awm_jax.layouts import detect
from awm_jax.numerics import host_blas
from conftest import random_model, save_llama


def _folded_gram64(w, g):
    """The Gram of the folded matrix straight from the formula, float64."""
    wf = w.astype(np.float64) * g.astype(np.float64)[None, :]
    return wf.T @ wf


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return a @ b / np.sqrt((a @ a) * (b @ b))


def test_fold_into_gram_matches_the_folded_matrix():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 32)).astype(np.float32)
    g = rng.uniform(-0.3, 1.5, 32).astype(np.float32)
    got = fold_into_gram(w.T @ w, g)
    np.testing.assert_allclose(got, _folded_gram64(w, g), rtol=2e-5, atol=2e-5 * np.abs(got).max())


@pytest.mark.parametrize("exponent", [100, -100, 60, -60])
def test_fold_into_gram_survives_gains_outside_the_float_range(exponent):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 32)).astype(np.float32)
    g = np.ldexp(rng.uniform(0.5, 1.5, 32), exponent).astype(np.float32)
    got = fold_into_gram(w.T @ w, g)
    assert np.isfinite(got).all() and np.abs(got).max() > 0
    # equal up to a power-of-two factor (CKA is scale free)
    assert _cosine(got, _folded_gram64(w, g)) == pytest.approx(1.0, abs=1e-6)


@pytest.fixture
def bf16_model_with_gains(tmp_path):
    rng = np.random.default_rng(2)
    emb, qs, ks = random_model(rng, vocab=128, hidden=64, layers=2, q_dim=64, k_dim=32)
    bf = ml_dtypes.bfloat16
    qs, ks = [q.astype(bf) for q in qs], [k.astype(bf) for k in ks]
    gains = [rng.uniform(0.5, 1.5, 64).astype(np.float32) for _ in range(2)]
    extra = [(f"model.layers.{i}.input_layernorm.weight", g.shape, np.float32, (lambda a=g: a))
             for i, g in enumerate(gains)]
    return save_llama(tmp_path / "m", emb.astype(bf), qs, ks, dtype=bf, extra=extra), qs, ks, gains


def test_folded_fingerprint_is_the_gram_of_the_folded_weights(bf16_model_with_gains, monkeypatch):
    folder, qs, ks, gains = bf16_model_with_gains
    calls = []
    if host_blas.bf16_gemm_available():  # the stored bf16 values reach the matrix units unchanged
        real = host_blas.gram_layers_bf16
        monkeypatch.setattr(host_blas, "gram_layers_bf16", lambda w: calls.append(w.shape) or real(w))
    resolved = detect(open_checkpoint(folder))
    grams = model_grams(resolved, None, norm_gains="fold")
    for layer in range(2):
        for got, w in zip((grams.q[layer], grams.k[layer]), (qs[layer], ks[layer])):
            want = _folded_gram64(np.asarray(w, np.float32), gains[layer])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        # the Freivalds check's matrices are the folded ones
        fq, _ = layer_matrices(resolved, layer, "qk", "fold")
        np.testing.assert_allclose(fq, np.asarray(qs[layer], np.float32) * gains[layer][None, :], rtol=1e-6)
    if host_blas.bf16_gemm_available():
        assert calls, "folding must not take the stored bf16 weights off the bf16 route"
