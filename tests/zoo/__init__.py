"""Tests of the lineage zoo (a package so test module names stay unique).

The zoo needs the ``zoo`` extra (``pip install "awm_jax[zoo]"``); without it every module here
is skipped by :func:`require_zoo_extra`, called before the module imports the zoo.
"""

import pytest

from awm_jax.zoo import EXTRA_PACKAGES


def require_zoo_extra() -> None:
    """Skips the calling test module unless every package of the zoo extra can be imported."""
    for module in EXTRA_PACKAGES.values():
        pytest.importorskip(module, reason='the lineage zoo needs the zoo extra: pip install "awm_jax[zoo]"')
