"""Scores on the architecture fixtures: the AWM test itself, end to end through ``awm_jax.compare``.

For every architecture: a perturbed copy of a model scores > 0.5 against it, an independent
random model of the same architecture scores |S| < 0.05, and the same weights stored in another
layout (the weight class's Llama-layout reference: fused vs split, Conv1D vs Linear, interleaved
vs blocks, MLA low-rank vs full ``q_proj``, wrapped vs plain) score 1.0000 within 1e-5.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import awm_jax
from ._fixtures import CASES, CLASS_REFERENCE, MANIFEST, case_dir, rewrite

SCORED = [c for c in CASES if MANIFEST["cases"][c]["qk"] == "class"]
CROSS = [c for c in SCORED if c != CLASS_REFERENCE[MANIFEST["cases"][c]["class"]]]
#: Noise added to every matrix of the perturbed copy, relative to that matrix's standard deviation.
PERTURBATION = 0.5


def _rng(case: str, salt: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"{case}/{salt}".encode()).hexdigest()[:8], 16))


def _compare(a, b):
    return awm_jax.compare(a, b, cache=False, device="cpu")


@pytest.mark.parametrize("case", SCORED)
def test_perturbed_copy_scores_above_half(case, tmp_path):
    rng = _rng(case, "perturbed")

    def perturb(name, a):
        return a + rng.standard_normal(a.shape) * PERTURBATION * a.std() if a.ndim >= 2 else a

    result = _compare(case_dir(case), rewrite(case, tmp_path / "perturbed", perturb))
    assert result.mean > 0.5, f"{case}: perturbed copy scores {result.mean:.4f}"


@pytest.mark.parametrize("case", SCORED)
def test_independent_model_scores_near_zero(case, tmp_path):
    rng = _rng(case, "independent")

    def fresh(name, a):
        return rng.standard_normal(a.shape) * (a.std() or 1.0) if a.ndim >= 2 else a

    result = _compare(case_dir(case), rewrite(case, tmp_path / "independent", fresh))
    assert abs(result.mean) < 0.05, f"{case}: independent model scores {result.mean:.4f}"


@pytest.mark.parametrize("case", CROSS)
def test_same_weights_in_another_layout_score_one(case):
    reference = CLASS_REFERENCE[MANIFEST["cases"][case]["class"]]
    result = _compare(case_dir(reference), case_dir(case))
    for what, value in (("mean", result.mean), ("wq", result.wq), ("wk", result.wk)):
        assert abs(value - 1.0) <= 1e-5, f"{case} vs {reference}: {what} = {value:.7f}"


def test_fp8_copy_scores_high_but_not_identical():
    result = _compare(case_dir("qwen3"), case_dir("qwen3_fp8"))
    assert 0.9 < result.mean < 1.0 - 1e-6, result.mean
