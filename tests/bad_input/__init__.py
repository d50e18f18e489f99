"""The bad-input corpus: model folders a stranger might hand over, and what awm_jax must say.

``cases.py`` builds each case and declares its exit code and message (``cases_numerics.py`` adds
the numerical ones: float range, too few dimensions, degenerate alignments; ``cases_options.py``:
option values, list files and output paths; ``cases_network.py``: hostile hub endpoints;
``cases_formats.py``: published formats); ``test_corpus.py`` runs them through the CLI;
``table.py`` writes ``docs/errors.md`` from them; ``test_output_files.py`` and
``test_signals.py`` check output files and Ctrl-C on real runs; ``fuzz_targets.py`` holds the
property-based fuzzing targets shared by ``tests/test_fuzz.py`` and ``benchmarks/fuzz.py``.
"""

from . import cases_numerics  # noqa: F401  (registers its cases in cases.CASES)
