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
