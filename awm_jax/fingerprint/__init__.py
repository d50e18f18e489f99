"""Per-model Gram fingerprints and the verified on-disk cache that keeps them.

:mod:`awm_jax.fingerprint.grams` computes a model's per-layer Q/K (or MLP-input) Grams and
reads them back (:class:`GramSet`, :func:`model_grams`); :mod:`awm_jax.fingerprint.cache`
keeps them on disk, keyed and checksummed, and verifies every entry before it is used
(:class:`FingerprintCache`).
"""

from awm_jax.fingerprint.cache import FingerprintCache, default_cache_dir
from awm_jax.fingerprint.grams import KINDS, GramSet, aligned_empty, chunk_layers_for, model_grams

__all__ = ["GramSet", "FingerprintCache", "KINDS", "aligned_empty", "default_cache_dir", "model_grams",
           "chunk_layers_for"]
