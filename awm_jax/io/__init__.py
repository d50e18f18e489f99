"""Reading what users point awm_jax at, and writing what it produces.

``checkpoint`` (a model folder read lazily and defensively: ``files``, ``safetensors``,
``pickle_weights``), ``gguf`` (llama.cpp files), ``adapters`` (PEFT LoRA merged onto its base),
``hub`` (hub ids into local snapshots; ``hub_partial``, ``hub_gguf``, ``sparse``: only the
tensors read, for safetensors and GGUF repositories), ``vocab`` (vocabularies and shared tokens), ``suites``
(the experiment suites), ``atomic`` (atomic output files), ``memory`` (memory limits and the
allocator).
"""
