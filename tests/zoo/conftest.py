"""Fixtures for the zoo tests: token ids, features, and the micro zoo built once per session."""

from __future__ import annotations

import time

import numpy as np
import pytest


@pytest.fixture
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 97, size=(2, 11)).astype(np.int32)


@pytest.fixture
def feats() -> np.ndarray:
    from .zoo_helpers import FEATURE_SIZE

    return np.random.default_rng(1).normal(size=(2, 3, FEATURE_SIZE)).astype(np.float32)


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory):
    """The micro zoo built once: ``(cache_dir, report, cpu_seconds, wall_seconds)``."""
    from awm_jax.zoo.build import build_plan
    from awm_jax.zoo.plans import micro_plan

    cache = tmp_path_factory.mktemp("micro-zoo")
    cpu, wall = time.process_time(), time.perf_counter()
    report = build_plan(micro_plan(), cache, progress=False, log=lambda s: None)
    return cache, report, time.process_time() - cpu, time.perf_counter() - wall
