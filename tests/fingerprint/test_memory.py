"""The CLIs' allocator settings (awm_jax.io.memory)."""

import platform
import subprocess
import sys

import pytest

from awm_jax.io.memory import tune_allocator


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_applies_on_glibc():
    # In a child process: the settings are process-wide and the test process keeps its own.
    code = "from awm_jax.io.memory import tune_allocator; import numpy as np; assert tune_allocator(); np.ones(1 << 24).sum()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tune_allocator_reports_a_missing_mallopt(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_allocator() is False


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_allocator_reuses_freed_large_blocks():
    # A 64 MiB array freed and allocated again: glibc's default maps it afresh (thousands of page
    # faults, or at least 32 with 2 MiB pages); tuned, the second one reuses the freed heap memory.
    code = """
import resource, sys
import numpy as np
from awm_jax.io.memory import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
x = np.ones(1 << 24, np.float32); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = np.ones(1 << 24, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], check=True, capture_output=True,
                                       text=True).stdout) for mode in ("default", "tuned")}
    assert faults["tuned"] < 16 <= faults["default"], faults
