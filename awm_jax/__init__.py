"""awm_jax: the AWM weight-matrix lineage fingerprint for large language models, in JAX.

Pipeline, one module per stage: ``checkpoint`` (lazy safetensors reading) -> ``layouts``
(architecture tensor layouts) -> ``vocab`` (vocabularies, shared tokens) -> ``alignment``
(embedding-column assignment) -> ``fingerprint`` (per-model Gram matrices, cached) ->
``kernels`` (unbiased CKA, vmapped over layers) -> ``layer_match`` -> ``statistics`` ->
``report``; ``pipeline.compare`` runs it and ``python -m awm_jax.compare`` is its CLI.
"""

from awm_jax._version import ALGORITHM_VERSION, __version__
from awm_jax.errors import AWMError
from awm_jax.pipeline import compare
from awm_jax.report import CompareResult, LayerScore, ModelSummary

__all__ = [
    "ALGORITHM_VERSION",
    "AWMError",
    "CompareResult",
    "LayerScore",
    "ModelSummary",
    "__version__",
    "compare",
]
