"""Property-based fuzzing of the untrusted-file parsers (a short run; benchmarks/fuzz.py runs long).

Safetensors headers, index files, tokenizer files (tokenizer.json, vocab.json, tokenizer.model,
*.tiktoken) and config.json: each generated file is either read with the format's invariants
holding, or refused with a documented one-line AWMError. Fingerprint cache entries, damaged,
swapped or forged: the Grams read are those of a recomputation, and the entry is healed (no
error at all). Any other exception fails the test.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from bad_input.fuzz_targets import TARGETS, run_example
from hypothesis import HealthCheck, given, settings

#: Examples per target in the test suite (the benchmark runs >= 10,000 in all).
EXAMPLES = 150


@pytest.mark.parametrize("name", sorted(n for n, t in TARGETS.items() if t.in_tests))
def test_parser_fuzz(name):
    target = TARGETS[name]
    base = Path(tempfile.mkdtemp(prefix=f"awm_jax-fuzz-{name}-"))
    outcomes = {"ok": 0, "refused": 0, "healed": 0}
    count = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(target.strategy)
    def check(example):
        count[0] += 1
        outcomes[run_example(target, base / str(count[0]), example)] += 1

    try:
        check()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # Both branches are reached: the strategies make valid files as well as broken ones.
    assert outcomes["ok"] > 0 and outcomes["refused"] + outcomes["healed"] > 0, outcomes
    if not target.allowed:
        assert outcomes["refused"] == 0, outcomes
