"""Scores under function-preserving scalings and extreme float ranges, through the real compare.

``Wq * c`` with ``Wk / c`` leaves every attention logit as it was, and CKA and the column cosines
are scale invariant: no finite ``c`` may move a score, nor may a projection or an embedding of
extreme but finite magnitude.

- ``c`` a power of two (exact in bf16 and float32, what an adversary would use): every score is
  equal to the last bit.
- Any other ``c`` rounds ``W * c`` once; the float64 score of the rounded weights moves by less
  than 1e-8, but the float32 kernel's own rounding (up to ``KERNEL_ATOL`` = 2e-6 from the float64
  score, the accuracy ``test_kernels.py`` holds it to) falls differently, so two float32 runs
  agree within ``2 * KERNEL_ATOL``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from bad_input.cases_numerics import INVARIANCE_CASES, InvarianceCase

import awm_jax
from awm_jax.cli.compare import main
from conftest import random_model, save_llama
from test_kernels import cka_u_reference

#: Accuracy of a float32 score against the float64 reference (``tests/numerics/test_kernels.py``).
KERNEL_ATOL = 2e-6
TOL = 2 * KERNEL_ATOL


@pytest.fixture(scope="module")
def derived_pair(tmp_path_factory):
    """A base model, and a derived model's arrays (the base plus noise)."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    emb, qs, ks = random_model(rng, vocab=160, hidden=32, layers=3, q_dim=32, k_dim=16)
    base = save_llama(root / "base", emb, qs, ks)
    noisy = lambda a: (a + 0.03 * rng.standard_normal(a.shape)).astype(np.float32)  # noqa: E731
    derived = (noisy(emb), [noisy(q) for q in qs], [noisy(k) for k in ks])
    return base, derived, save_llama(root / "derived", *derived)


def _scores(r) -> np.ndarray:
    return np.array([r.wq, r.wk, r.mean, *(s for l in r.layers for s in (l.wq, l.wk)), r.alignment["mean_abs_cos"]])


def _same(changed, clean, exact: bool) -> None:
    assert changed.verdict == clean.verdict and changed.alignment.get("used") == clean.alignment.get("used")
    if exact:
        np.testing.assert_array_equal(_scores(changed), _scores(clean))
    else:
        np.testing.assert_allclose(_scores(changed), _scores(clean), rtol=0, atol=TOL)


POWERS = [-60, -45, -32, -30, -20, 20, 30, 32, 45, 60]
OTHERS = [3.0**-25, 3.0**25, np.pi * 1e-15, np.e * 1e17]


@pytest.mark.parametrize("alignment", ["assignment", "auto"])
@pytest.mark.parametrize("c", [2.0**p for p in POWERS] + OTHERS, ids=[f"2^{p}" for p in POWERS] + ["3^-25", "3^25", "pi*1e-15", "e*1e17"])
def test_query_times_c_key_over_c_leaves_every_score(derived_pair, tmp_path, c, alignment):
    base, (emb, qs, ks), derived = derived_pair
    clean = awm_jax.compare(base, derived, cache=False, alignment=alignment)
    folder = save_llama(tmp_path / "scaled", emb, [(q * np.float32(c)).astype(np.float32) for q in qs],
                        [(k / np.float32(c)).astype(np.float32) for k in ks])
    scaled = awm_jax.compare(base, folder, cache=False, alignment=alignment)
    assert clean.verdict == "derived"
    _same(scaled, clean, exact=float(np.frexp(c)[0]) == 0.5)
    for w in qs:  # the float64 truth does not move: what differs is float32 rounding
        rounded = (w * np.float32(c)).astype(np.float32)
        assert abs(cka_u_reference(rounded, w) - 1.0) < 1e-8


@pytest.mark.parametrize("target", ["query", "key", "embedding"])
@pytest.mark.parametrize("p", [-100, 100])
def test_one_matrix_of_extreme_magnitude(derived_pair, tmp_path, target, p):
    base, (emb, qs, ks), derived = derived_pair
    s = np.float32(2.0**p if target != "embedding" else 2.0 ** (p * 7 // 10))  # 2^+-70 for the embedding
    emb2 = emb * s if target == "embedding" else emb
    qs2 = [qs[0] * s, *qs[1:]] if target == "query" else qs
    ks2 = [*ks[:-1], ks[-1] * s] if target == "key" else ks
    folder = save_llama(tmp_path / "extreme", emb2, qs2, ks2)
    _same(awm_jax.compare(base, folder, cache=False), awm_jax.compare(base, derived, cache=False), exact=True)


@pytest.mark.parametrize("case", INVARIANCE_CASES, ids=lambda c: c.name)
def test_invariance_case_through_the_cli(case: InvarianceCase, tmp_path: Path):
    """Each case of the corpus: clean pair and changed pair through the command line, same JSON scores."""
    clean_args, changed_args = case.build(tmp_path)
    results = []
    for name, args in (("clean", clean_args), ("changed", changed_args)):
        out = tmp_path / f"{name}.json"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([*args, "--json", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
        assert code == 0 and "Traceback" not in err.getvalue(), err.getvalue()
        results.append(json.loads(out.read_text()))
    clean, changed = results
    assert clean["verdict"] == "derived" and changed["verdict"] == clean["verdict"]
    flat = lambda r: np.array([r["wq"], r["wk"], r["mean"], *(l[k] for l in r["layers"] for k in ("wq", "wk")),  # noqa: E731
                               r["alignment"]["mean_abs_cos"]])
    if case.exact:
        np.testing.assert_array_equal(flat(changed), flat(clean))
    else:
        np.testing.assert_allclose(flat(changed), flat(clean), rtol=0, atol=TOL)
