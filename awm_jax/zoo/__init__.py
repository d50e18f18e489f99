"""The lineage zoo: tiny language models with known lineage, trained on local text.

Bases are trained from scratch with JAX on Python standard-library source, Debian
documentation and manual pages; derivatives are made from them by real training runs
(instruction tuning, continued pretraining, preference tuning, vocabulary and multimodal
extension, pruning with healing, MoE upcycling), by function-preserving weight rewrites, or by
distillation into a fresh student. Every model is saved as a Hugging Face checkpoint folder and
every pair of models carries a ground-truth label (``derived``, ``independent``,
``shared-init``, ``distilled``) in the zoo's ``MANIFEST.json``.

Build with ``python -m awm_jax.zoo build`` (see :mod:`awm_jax.zoo.build`). Submodules, in
pipeline order: :mod:`~awm_jax.zoo.corpus`, :mod:`~awm_jax.zoo.tokenizer`,
:mod:`~awm_jax.zoo.data`, :mod:`~awm_jax.zoo.vision`, :mod:`~awm_jax.zoo.model`,
:mod:`~awm_jax.zoo.train`, :mod:`~awm_jax.zoo.checkpoint`, :mod:`~awm_jax.zoo.derive`,
:mod:`~awm_jax.zoo.manipulate`, :mod:`~awm_jax.zoo.plans`, :mod:`~awm_jax.zoo.lineage`,
:mod:`~awm_jax.zoo.build`.

The names below are imported lazily, so importing this package does not import JAX. The zoo
needs packages the base install does not (flax, optax, tokenizers, pillow, safetensors):
``pip install "awm_jax[zoo]"``; :func:`missing_extra` names those absent.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = [
    "EXTRA_PACKAGES",
    "missing_extra",
    "ModelConfig",
    "Checkpoint",
    "TrainConfig",
    "Plan",
    "full_plan",
    "micro_plan",
    "examples_plan",
    "build_plan",
    "write_examples",
    "default_cache_dir",
    "manipulate",
    "MANIPULATIONS",
    "label_pairs",
    "LABELS",
]

#: The packages the ``zoo`` extra installs (``pip install "awm_jax[zoo]"``): distribution name ->
#: import name.
EXTRA_PACKAGES = {"flax": "flax", "optax": "optax", "tokenizers": "tokenizers", "pillow": "PIL",
                  "safetensors": "safetensors"}


def missing_extra() -> list[str]:
    """The distribution names from :data:`EXTRA_PACKAGES` whose module cannot be imported here
    (empty: the extra is installed). Looks the modules up without importing them."""
    return [dist for dist, module in EXTRA_PACKAGES.items() if importlib.util.find_spec(module) is None]


_WHERE = {
    "ModelConfig": "model",
    "Checkpoint": "checkpoint",
    "TrainConfig": "train",
    "Plan": "plans",
    "full_plan": "plans",
    "micro_plan": "plans",
    "examples_plan": "plans",
    "build_plan": "build",
    "write_examples": "build",
    "default_cache_dir": "build",
    "manipulate": "manipulate",
    "MANIPULATIONS": "manipulate",
    "label_pairs": "lineage",
    "LABELS": "lineage",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"awm_jax.zoo.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'awm_jax.zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
