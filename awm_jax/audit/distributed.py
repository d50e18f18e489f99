"""Multi-host audits: joining a ``jax.distributed`` run.

Each process scores its share of the pairs and writes its own progress file into the shared
output folder; after a barrier every process reads all of them (see :mod:`awm_jax.audit.core`).
"""

from __future__ import annotations

import os

__all__ = ["initialize_distributed"]


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins a multi-host run: ``jax.distributed.initialize`` before any other JAX call.

    Arguments default to ``AWM_JAX_COORDINATOR`` (``host:port`` of process 0),
    ``AWM_JAX_NUM_PROCESSES`` and ``AWM_JAX_PROCESS_ID``; when none is set, JAX detects the
    cluster itself (Slurm, Open MPI, TPU pods).

    Args:
      coordinator: ``host:port`` of process 0.
      num_processes: number of processes.
      process_id: this process's index, ``0 .. num_processes - 1``.
    """
    import jax

    coordinator = coordinator or os.environ.get("AWM_JAX_COORDINATOR")
    if num_processes is None and os.environ.get("AWM_JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["AWM_JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("AWM_JAX_PROCESS_ID"):
        process_id = int(os.environ["AWM_JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
