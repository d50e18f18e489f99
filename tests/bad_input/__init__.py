"""The bad-input corpus: model folders a stranger might hand over, and what awm_jax must say.

``cases.py`` builds each case and declares its exit code and message (``cases_numerics.py`` adds
the numerical ones: float range, too few dimensions, degenerate alignments); ``test_corpus.py``
runs them through the CLI; ``table.py`` writes ``docs/errors.md`` from them; ``fuzz_targets.py``
holds the property-based fuzzing targets shared by ``tests/test_fuzz.py`` and
``benchmarks/fuzz.py``.
"""

from . import cases_numerics  # noqa: F401  (registers its cases in cases.CASES)
