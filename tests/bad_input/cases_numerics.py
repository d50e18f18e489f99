"""Bad-input cases of the numerics: float range, too few dimensions, degenerate alignments.

Two kinds, both run through the real command line:

- refusals (:data:`cases.CASES`, registered with the ``_case`` decorator like every case of
  ``cases.py``, so ``test_corpus.py`` runs them and ``docs/errors.md`` lists them): a model too
  narrow for the unbiased CKA, too few shared tokens to align, a degenerate embedding;
- :data:`INVARIANCE_CASES`: function-preserving or scale-only changes that must give the clean
  run's scores (``tests/numerics/test_scale_invariance.py`` runs each through ``awm_jax.compare``'s CLI
  twice, clean and changed, and compares the JSON).

Imported by the package (``tests/bad_input/__init__.py``), so the refusals are in ``CASES``
wherever the corpus is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from awm_jax.synthetic import llama_config, write_model

from .cases import CASES, HIDDEN, LAYERS, VOCAB, _arrays, _case, _model, _specs, good_model

__all__ = ["INVARIANCE_CASES", "InvarianceCase"]


# -- refusals ---------------------------------------------------------------------------------------


def _narrow(root: Path, hidden: int) -> list[str]:
    """A model whose hidden size is ``hidden`` (one 16-wide head), paired with the 32-wide partner."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((VOCAB, hidden)).astype(np.float32)
    qs = [rng.standard_normal((16, hidden)).astype(np.float32) for _ in range(LAYERS)]
    ks = [rng.standard_normal((16, hidden)).astype(np.float32) for _ in range(LAYERS)]
    cfg = llama_config(VOCAB, hidden, LAYERS, 1, 1, 16, dtype="float32")
    bad = write_model(root / "bad", _specs(emb, qs, ks), cfg, [f"tok{i}" for i in range(VOCAB)])
    return [str(bad), str(good_model(root))]


for _n in (1, 2, 3):
    _case(f"hidden_size_{_n}", f"a model of hidden size {_n} (the unbiased CKA needs 4)", 6,
          "too few hidden dimensions for the unbiased CKA", subprocess=_n == 2)(
        lambda root, n=_n: _narrow(root, n))


def _few_shared(root: Path, shared: int) -> list[str]:
    """The partner's own weights under a vocabulary sharing only ``shared`` tokens with it."""
    tokens = [f"tok{i}" if i < shared else f"other{i}" for i in range(VOCAB)]
    return [str(_model(root / "bad", seed=1, tokens=tokens)), str(good_model(root))]


for _t in (1, 3):
    _case(f"shared_tokens_{_t}", f"a copy of the partner sharing only {_t} token(s) with it (hidden size {HIDDEN})", 6,
          f"share only {_t} token(s)", subprocess=_t == 1)(lambda root, t=_t: _few_shared(root, t))


@_case("embedding_rows_equal", "an embedding whose rows are all equal", 6, "span only 1 direction")
def _rows_equal(root):
    e, qs, ks = _arrays()
    return [str(_model(root / "bad", emb=np.repeat(e[:1], VOCAB, axis=0), qs=qs, ks=ks)), str(good_model(root))]


@_case("embedding_zero_column", "an embedding with one all-zero column", 6, "embedding columns are zero")
def _zero_column(root):
    e, qs, ks = _arrays()
    e[:, 5] = 0
    return [str(_model(root / "bad", emb=e, qs=qs, ks=ks)), str(good_model(root))]


# -- invariances ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InvarianceCase:
    """A change that must leave every score of a derived pair as it was.

    Attributes:
      name: identifier.
      input: what the change is.
      change: ``(emb, qs, ks) -> (emb, qs, ks)``, applied to the derived model's float32 arrays.
      exact: the change is by powers of two (exact in float32): the scores must be equal to the
        last bit, not just within the tolerance.
    """

    name: str
    input: str
    change: Callable[[np.ndarray, list[np.ndarray], list[np.ndarray]], tuple]
    exact: bool = True

    def build(self, root: Path) -> tuple[list[str], list[str]]:
        """Writes a base model, a derived model (the base plus noise) and the changed derived
        model under ``root`` (three layers: enough for the calibrated test to say DERIVED);
        returns the CLI arguments of the clean pair and of the changed pair."""
        rng = np.random.default_rng(11)
        e, qs, ks = _arrays(seed=1)
        qs, ks = [*qs, *_arrays(seed=2)[1][:1]], [*ks, *_arrays(seed=2)[2][:1]]
        good = _model(root / "good", emb=e, qs=qs, ks=ks)
        noisy = lambda a: (a + 0.02 * rng.standard_normal(a.shape)).astype(np.float32)  # noqa: E731
        e, qs, ks = noisy(e), [noisy(q) for q in qs], [noisy(k) for k in ks]
        derived = _model(root / "derived", emb=e, qs=qs, ks=ks)
        e2, qs2, ks2 = self.change(e.copy(), [q.copy() for q in qs], [k.copy() for k in ks])
        changed = _model(root / "changed", emb=e2, qs=qs2, ks=ks2)
        return [str(good), str(derived)], [str(good), str(changed)]


def _qk(c: float) -> Callable:
    return lambda e, qs, ks: (e, [(q * np.float32(c)).astype(np.float32) for q in qs],
                              [(k / np.float32(c)).astype(np.float32) for k in ks])


def _one_q(c: float) -> Callable:
    return lambda e, qs, ks: (e, [(qs[0] * np.float32(c)).astype(np.float32), *qs[1:]], ks)


def _emb(c: float) -> Callable:
    return lambda e, qs, ks: ((e * np.float32(c)).astype(np.float32), qs, ks)


INVARIANCE_CASES: list[InvarianceCase] = [
    *(InvarianceCase(f"qk_scaled_2^{p}", f"every q_proj times 2^{p}, every k_proj times 2^{-p}", _qk(2.0**p))
      for p in (-60, -32, -30, 30, 32, 60)),
    InvarianceCase("qk_scaled_3^20", "every q_proj times 3^20, every k_proj divided by 3^20 (rounded)",
                   _qk(3.0**20), exact=False),
    InvarianceCase("one_q_scaled_2^100", "one q_proj times 2^100", _one_q(2.0**100)),
    InvarianceCase("one_q_scaled_2^-100", "one q_proj times 2^-100", _one_q(2.0**-100)),
    InvarianceCase("embedding_scaled_2^70", "the embedding times 2^70", _emb(2.0**70)),
    InvarianceCase("embedding_scaled_2^-70", "the embedding times 2^-70", _emb(2.0**-70)),
    InvarianceCase("embedding_scaled_7e25", "the embedding times 7e25 (not a power of two)", _emb(7e25), exact=False),
]

if len({c.name for c in CASES}) != len(CASES):  # pragma: no cover - a guard on the corpus itself
    raise RuntimeError("duplicate case names in the bad-input corpus")
