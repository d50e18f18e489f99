"""awm_jax: the AWM weight-matrix lineage fingerprint for large language models, in JAX.

Pipeline, one module per stage: ``checkpoint`` (lazy safetensors reading) -> ``layouts``
(architecture tensor layouts) -> ``vocab`` (vocabularies, shared tokens) -> ``alignment``
(embedding-column assignment) -> ``fingerprint`` (per-model Gram matrices, cached) ->
``kernels`` (unbiased CKA, vmapped over layers) -> ``layer_match`` -> ``statistics`` ->
``report``; ``pipeline.compare`` runs it and ``python -m awm_jax.compare`` is its CLI.

The public names are imported on first use, so ``python -m awm_jax.compare --help`` does not
pay for importing JAX.
"""

import importlib

from awm_jax._version import ALGORITHM_VERSION, __version__

__all__ = [
    "ALGORITHM_VERSION",
    "AWMError",
    "AuditResult",
    "CompareResult",
    "LayerScore",
    "ModelSummary",
    "__version__",
    "audit",
    "compare",
]

_LAZY = {
    "AWMError": "awm_jax.errors",
    "AuditResult": "awm_jax.audit.core",
    "CompareResult": "awm_jax.report",
    "LayerScore": "awm_jax.report",
    "ModelSummary": "awm_jax.report",
    "compare": "awm_jax.engine",
}


def __getattr__(name: str):
    if name == "audit":  # the package is callable as the API (awm_jax.audit(models, ...))
        value = importlib.import_module("awm_jax.audit")
        globals()[name] = value
        return value
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'awm_jax' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
