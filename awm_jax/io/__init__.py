"""Reading what users point awm_jax at, and writing what it produces.

``checkpoint`` (safetensors and, on request, pickle weights, read lazily and defensively),
``hub`` (hub ids into local snapshots), ``vocab`` (vocabularies and shared tokens), ``suites``
(the experiment suites), ``atomic`` (atomic output files), ``memory`` (memory limits and the
allocator).
"""
