"""Audits of many models: every pair of a set (``N x N``) or a set against references (``N x M``).

``core`` runs the stages on the pair engine (:mod:`awm_jax.engine`); ``journal`` makes the run
resumable; ``outputs`` writes matrices, plots and summaries; ``lineage_tree`` groups models into
families. ``python -m awm_jax.audit`` is the command line (:mod:`awm_jax.cli.audit`).

The package itself is callable as the API: ``awm_jax.audit(models, ...)`` is
:func:`awm_jax.audit.core.audit`. Nothing here imports JAX until an audit runs.
"""

import importlib
import sys
import types

__all__ = ["AuditModel", "AuditResult", "PairScore", "audit", "main"]

_LAZY = {"AuditModel": "awm_jax.audit.core", "AuditResult": "awm_jax.audit.core", "PairScore": "awm_jax.audit.core",
         "audit": "awm_jax.audit.core", "main": "awm_jax.cli.audit"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'awm_jax.audit' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from awm_jax.audit.core import audit

        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
