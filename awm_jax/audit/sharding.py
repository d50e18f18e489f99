"""Pair computations sharded over devices: a one-axis mesh of every device, pairs along it.

An audit's pair work is embarrassingly parallel: every row of a batch (one pair's layer, or one
pair's embedding-column sums) depends on that pair alone. The rows are laid along the ``pairs``
axis of a :class:`jax.sharding.Mesh` over all devices (of every process, after
:func:`initialize_distributed`); ``jax.shard_map`` runs the kernel, written for one row and
vmapped, on each device's rows with no communication. A batch always holds ``per_device`` rows
per device (short batches are padded), so every device runs the same compiled program whatever
the number of devices, and batches of one shape never recompile.

The layer-score kernels take their per-device bodies from :mod:`awm_jax.numerics.kernels` as
``compare`` calls them (``hsic_parts_layers``, ``paired_cka_from_parts``): with as many rows
per device as ``compare`` puts in a chunk of layers, a device runs ``compare``'s program and
its scores are bit-identical to ``compare``'s. The Grams of a tile are put on every device once
(:meth:`PairMesh.replicate`) and rows address them by index (:attr:`PairMesh.gather_align`,
:attr:`PairMesh.gather`), so a batch moves only indices, alignments and HSIC parts.

Many hosts. Start one process per host (each sees its local accelerators) with the same
command and the same arguments, on a shared file system (the fingerprint cache and the audit
folder must be visible to every process)::

    # host 0 (coordinator) and host 1, ..., host N-1:
    AWM_JAX_COORDINATOR=host0:12355 AWM_JAX_NUM_PROCESSES=N AWM_JAX_PROCESS_ID=<i> \\
        python -m awm_jax.audit --distributed --list models.txt --out audit/

``--distributed`` calls :func:`initialize_distributed`, which calls
``jax.distributed.initialize`` (with no variables set it relies on JAX's own cluster
detection: Slurm, Open MPI, Cloud TPU pods). Every process then sees the global mesh;
:meth:`PairMesh.put` builds global arrays from the rows each process holds
(``jax.make_array_from_process_local_data``), so a process reads only the weights of its own
rows, and :meth:`PairMesh.gather` returns every row to every process. Process 0 writes the
progress file and the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from awm_jax.numerics.kernels import (
    HsicParts,
    align_gram,
    column_cosine_accumulate,
    hsic_parts_layers,
    paired_cka_from_parts,
    unbiased_cka,
)

__all__ = [
    "PAIR_AXIS",
    "PairMesh",
    "pair_mesh",
    "initialize_distributed",
    "aligned_layer_cka",
]

#: Name of the mesh axis pairs are sharded along.
PAIR_AXIS = "pairs"


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
    coordinator = coordinator or os.environ.get("AWM_JAX_COORDINATOR")
    if num_processes is None and os.environ.get("AWM_JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["AWM_JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("AWM_JAX_PROCESS_ID"):
        process_id = int(os.environ["AWM_JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def aligned_layer_cka(k_base: jax.Array, l_target: jax.Array, perm: jax.Array, signs: jax.Array) -> jax.Array:
    """Unbiased CKA of one aligned base Gram against one target Gram (one item of a batch).

    Args:
      k_base: ``[n_b, n_b]`` base Gram.
      l_target: ``[n_t, n_t]`` target Gram.
      perm: ``[n_t]`` int32 base dimension of each target dimension.
      signs: ``[n_t]`` float32 +1/-1.

    Returns:
      Scalar score (the pipeline's ``paired_cka`` of one layer).
    """
    return unbiased_cka(align_gram(k_base, perm, signs), l_target)


def _align_rows(k_base, perm, signs):
    return jax.vmap(align_gram)(k_base, perm, signs)


def _gather_align_rows(stack, index, perm, signs):
    return jax.vmap(lambda i, p, s: align_gram(stack[i], p, s))(index, perm, signs)


def _gather_rows(stack, index):
    return stack[index]


def _cosine_rows(cross, sq_base, sq_target, rows_base, rows_target):
    return jax.vmap(column_cosine_accumulate)(cross, sq_base, sq_target, rows_base, rows_target)


@dataclasses.dataclass(frozen=True)
class PairMesh:
    """A one-axis device mesh and the sharded pair kernels compiled for it.

    Attributes:
      mesh: the mesh, axis ``pairs``, over every device of every process.
    """

    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def platform(self) -> str:
        return self.mesh.devices.flat[0].platform

    @property
    def sharding(self) -> NamedSharding:
        """Rows of a batch split along the ``pairs`` axis."""
        return NamedSharding(self.mesh, P(PAIR_AXIS))

    def batch_size(self, per_device: int) -> int:
        """Rows of a batch with ``per_device`` rows on every device."""
        return self.num_devices * per_device

    def local_rows(self, batch: int) -> range:
        """Rows of a ``batch``-row batch this process supplies (a contiguous block)."""
        per = batch // self.num_devices
        mine = [i for i, d in enumerate(self.mesh.devices.flat) if d.process_index == jax.process_index()]
        return range(mine[0] * per, (mine[-1] + 1) * per)

    def put(self, local: np.ndarray, batch: int) -> jax.Array:
        """A global ``[batch, ...]`` array sharded along ``pairs`` from this process's rows.

        Args:
          local: ``[len(local_rows(batch)), ...]`` this process's rows.
          batch: rows of the global batch.
        """
        if jax.process_count() == 1:
            return jax.device_put(local, self.sharding)
        return jax.make_array_from_process_local_data(self.sharding, local, (batch,) + local.shape[1:])

    def all_rows(self, local: np.ndarray) -> np.ndarray:
        """Every process's rows, in batch order, on every process (``local``: this process's rows)."""
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(local, tiled=True))

    def local_result(self, out: jax.Array) -> np.ndarray:
        """This process's rows of a sharded result, in batch order."""
        if jax.process_count() == 1:
            return np.asarray(out)
        shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards])

    @functools.cached_property
    def align(self):
        """``[B, n_b, n_b], [B, n_t], [B, n_t] -> [B, n_t, n_t]``: ``align_gram`` per row."""
        spec = P(PAIR_AXIS)
        return jax.jit(jax.shard_map(_align_rows, mesh=self.mesh, in_specs=(spec, spec, spec), out_specs=spec))

    @property
    def replicated(self) -> NamedSharding:
        """A whole array on every device."""
        return NamedSharding(self.mesh, P())

    def replicate(self, stack: np.ndarray) -> jax.Array:
        """Puts ``stack`` on every device (every process passes the same array)."""
        if jax.process_count() == 1:
            return jax.device_put(stack, self.replicated)
        return jax.make_array_from_process_local_data(self.replicated, stack, stack.shape)

    @functools.cached_property
    def gather_align(self):
        """``[S, n_b, n_b]`` replicated, ``[B]``, ``[B, n_t]``, ``[B, n_t] -> [B, n_t, n_t]``:
        ``align_gram(stack[index])`` per row, the Grams already on the devices."""
        spec = P(PAIR_AXIS)
        return jax.jit(jax.shard_map(_gather_align_rows, mesh=self.mesh, in_specs=(P(), spec, spec, spec),
                                     out_specs=spec))

    @functools.cached_property
    def gather(self):
        """``[S, n, n]`` replicated, ``[B] -> [B, n, n]``: ``stack[index]`` per row."""
        spec = P(PAIR_AXIS)
        return jax.jit(jax.shard_map(_gather_rows, mesh=self.mesh, in_specs=(P(), spec), out_specs=spec))

    @functools.cached_property
    def parts(self):
        """``[B, n, n] -> HsicParts`` with a leading ``B``: each row's HSIC parts.

        The per-device body is ``kernels.hsic_parts_layers``, the batched kernel ``compare``
        runs on a chunk of layers.
        """
        spec = P(PAIR_AXIS)
        return jax.jit(jax.shard_map(hsic_parts_layers, mesh=self.mesh, in_specs=spec, out_specs=spec))

    @functools.cached_property
    def cka(self):
        """``[B, n_t, n_t], HsicParts, [B, n_t, n_t], HsicParts -> [B]``: the CKA of each row's
        aligned base against its target, both sides' parts given.

        The per-device body is ``kernels.paired_cka_from_parts``, ``compare``'s own batched
        kernel; with as many rows per device as ``compare`` has layers per chunk, each device
        runs ``compare``'s program and the scores are bit-identical to it.
        """
        spec = P(PAIR_AXIS)
        return jax.jit(jax.shard_map(paired_cka_from_parts, mesh=self.mesh, in_specs=(spec,) * 4, out_specs=spec))

    @functools.cached_property
    def cosine_sums(self):
        """Adds one block of shared embedding rows to each row's column-cosine sums.

        ``cross [B, n_b, n_t], sq_base [B, n_b], sq_target [B, n_t], rows_base [B, r, n_b],
        rows_target [B, r, n_t] -> (cross, sq_base, sq_target)``: ``column_cosine_accumulate``
        per row; the running sums are donated.
        """
        spec = P(PAIR_AXIS)
        return jax.jit(
            jax.shard_map(_cosine_rows, mesh=self.mesh, in_specs=(spec,) * 5, out_specs=(spec,) * 3),
            donate_argnums=(0, 1, 2),
        )

    def aligned_cka(self, k_base: np.ndarray, l_target: np.ndarray, perm: np.ndarray, signs: np.ndarray,
                    batch: int) -> np.ndarray:
        """Scores of this process's rows of one batch (:func:`aligned_layer_cka` per row).

        Args:
          k_base: ``[rows, n_b, n_b]`` base Grams of this process's rows.
          l_target: ``[rows, n_t, n_t]`` target Grams.
          perm: ``[rows, n_t]`` int32.
          signs: ``[rows, n_t]`` float32.
          batch: rows of the global batch (a multiple of the device count).

        Returns:
          ``[rows]`` float32 scores of this process's rows.
        """
        put = functools.partial(self.put, batch=batch)
        aligned = self.align(put(k_base), put(perm), put(signs))
        target = put(l_target)
        return self.local_result(self.cka(aligned, self.parts(aligned), target, self.parts(target)))

    def put_parts(self, parts: HsicParts, batch: int) -> HsicParts:
        """This process's rows of host-side parts as a sharded global :class:`HsicParts`."""
        return HsicParts(*(self.put(np.asarray(x), batch) for x in parts))


def pair_mesh(devices: list[jax.Device] | None = None) -> PairMesh:
    """A :class:`PairMesh` over ``devices`` (default: every device of the default backend).

    Args:
      devices: the devices, in order; with several processes, all processes' devices.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if not devices:
        raise ValueError("pair_mesh needs at least one device")
    return PairMesh(Mesh(np.array(devices), (PAIR_AXIS,)))
