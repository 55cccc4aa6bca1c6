"""Multi-host start-up: ``jax.distributed`` from the environment, per-process data shards,
host-level collectives and per-process copies of sharded parameters.

TPU pods find their peers themselves (``jax.distributed.initialize()`` with no arguments).
GPU and CPU clusters pass ``ARPO_COORDINATOR`` (host:port of process 0),
``ARPO_NUM_PROCESSES`` and ``ARPO_PROCESS_ID``; ``tpu_scripts/launch_gpu.sh`` sets them.

Every function here that gathers is a collective: all processes must call it, in the same
order. On one process they are identities (no communication).
"""

from __future__ import annotations

import functools
import math
import os
import pickle

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arpo_jax.models.sharding import make_mesh, state_shardings


def initialize_from_env(environ=None) -> bool:
    """Initialises ``jax.distributed`` when the environment asks for it; True if it did."""
    env = os.environ if environ is None else environ
    coordinator = env.get("ARPO_COORDINATOR")
    if coordinator:
        missing = [k for k in ("ARPO_NUM_PROCESSES", "ARPO_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"ARPO_COORDINATOR is set but {', '.join(missing)} is not")
        # Cross-process collectives for the CPU backend (GPU/TPU backends are unaffected).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=int(env["ARPO_NUM_PROCESSES"]),
                                   process_id=int(env["ARPO_PROCESS_ID"]))
        return True
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # multi-host TPU slice: discovered from the TPU metadata
        return True
    return False


def is_main_process() -> bool:
    """Only process 0 writes logs, dumps and exports."""
    return jax.process_index() == 0


def process_rows(num_rows: int, name: str | None = None) -> slice:
    """The slice of a global batch of N = ``num_rows`` rows (or prompts) that this process
    feeds: [i·N/n, (i+1)·N/n) for process i of n. ``name``: the config key an error names."""
    n, i = jax.process_count(), jax.process_index()
    if num_rows % n:
        what = f"{name} ({num_rows})" if name else f"global batch of {num_rows} rows"
        raise ValueError(f"{what} must split evenly over the {n} JAX processes")
    per = num_rows // n
    return slice(i * per, (i + 1) * per)


def rows_held(sharding: NamedSharding, num_rows: int) -> int:
    """How many distinct rows of a [num_rows, ...] array laid out by ``sharding`` this
    process's devices hold (num_rows / processes when the rows split over the processes)."""
    shape = (num_rows,) + (1,) * (len(sharding.spec) - 1 if sharding.spec else 0)
    held = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        held.update(range(*index[0].indices(num_rows)))
    return len(held)


def allgather_objects(obj) -> list:
    """``obj`` of every process, in process order (pickled through ``process_allgather``)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size)))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: data.size] = data
    bufs = np.asarray(multihost_utils.process_allgather(buf))  # [processes, longest]
    return [pickle.loads(b[:n].tobytes()) for b, n in zip(bufs, sizes)]


def allgather_max(values) -> np.ndarray:
    """The element-wise maximum over processes of an int array of the same shape everywhere."""
    values = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).max(axis=0)


def local_mesh_shape(mesh_shape: dict[str, int], local_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) of ``local_mesh`` for a global mesh of ``mesh_shape`` and a process
    with ``local_devices`` devices: as much of the global tensor split as the process holds
    (their gcd: tensor 8 over hosts of 4 devices → 4), the other devices on fsdp when the global
    mesh shards parameters over fsdp, on data otherwise."""
    tensor = math.gcd(mesh_shape["tensor"], local_devices)
    rest = local_devices // tensor
    return (1, rest, tensor) if mesh_shape["fsdp"] > 1 else (rest, 1, tensor)


def local_mesh(mesh: Mesh) -> Mesh:
    """A mesh over this process's own devices, for work each process does alone (rollouts):
    ``mesh`` itself on one process; else laid out by ``local_mesh_shape`` on
    ``jax.local_devices()``."""
    if jax.process_count() == 1:
        return mesh
    devices = jax.local_devices()
    return make_mesh(local_mesh_shape(dict(mesh.shape), len(devices)), devices=devices)


@functools.lru_cache(maxsize=8)
def _replicate(mesh: Mesh):
    return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))


@functools.lru_cache(maxsize=8)
def _cast(dtype):
    return jax.jit(lambda x: x.astype(dtype))  # keeps the input's sharding


def _needs_cast(x, dtype) -> bool:
    return jax.numpy.issubdtype(x.dtype, jax.numpy.floating) and x.dtype != dtype


def is_copied(tree, dtype) -> bool:
    """Whether ``local_copy(tree, mesh, dtype)`` makes new arrays (several processes, or leaves
    stored in another dtype than ``dtype``) rather than returning the trainer's own."""
    return jax.process_count() > 1 or (dtype is not None and any(_needs_cast(x, dtype)
                                                                 for x in jax.tree.leaves(tree)))


def local_copy(tree, mesh: Mesh, dtype=None):
    """A full copy of the (global, sharded) arrays ``tree`` on this process's devices, laid
    out for ``mesh`` (a ``local_mesh``) by the parameter partition rules. A leaf spread over
    several processes is all-gathered on device (one leaf at a time, so the extra memory is
    one replicated leaf) and its local replica re-sharded. The identity on one process.

    dtype: store floating leaves in it (cast before the gather). The model casts every weight
    to its compute dtype before use, so a copy in the compute dtype computes with the same
    weights (identical logits in the CPU test; XLA may keep excess precision in a fused cast
    elsewhere), in half the memory when the originals are fp32 master weights. On one process
    only the leaves whose dtype differs are copied (cast in place of their sharding): the
    memory-bound decode then reads compute-dtype weights; the others are shared, not copied.
    """
    if jax.process_count() == 1:
        if dtype is None:
            return tree
        cast = lambda x: _cast(jax.numpy.dtype(dtype))(x) if _needs_cast(x, dtype) else x  # noqa: E731
        return jax.tree.map(cast, tree)

    def one(x, sharding):
        if dtype is not None and _needs_cast(x, dtype):
            x = _cast(jax.numpy.dtype(dtype))(x)
        if x.is_fully_addressable:
            return jax.device_put(x, sharding)
        full = x if x.is_fully_replicated else _replicate(x.sharding.mesh)(x)
        return jax.device_put(full.addressable_data(0), sharding)

    return jax.tree.map(one, tree, state_shardings(tree, mesh))


def global_batch(local_tree, sharding: NamedSharding):
    """Assembles per-process host arrays (this process's rows) into global jax.Arrays."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)
