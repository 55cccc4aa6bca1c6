"""Multi-host start-up: ``jax.distributed`` from the environment, per-process data shards.

TPU pods find their peers themselves (``jax.distributed.initialize()`` with no arguments).
GPU and CPU clusters pass ``ARPO_COORDINATOR`` (host:port of process 0),
``ARPO_NUM_PROCESSES`` and ``ARPO_PROCESS_ID``; ``tpu_scripts/launch_gpu.sh`` sets them.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding


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


def process_rows(num_rows: int) -> slice:
    """The slice of a global batch of ``num_rows`` rows that this process feeds."""
    n, i = jax.process_count(), jax.process_index()
    if num_rows % n:
        raise ValueError(f"global batch of {num_rows} rows does not split over {n} processes")
    per = num_rows // n
    return slice(i * per, (i + 1) * per)


def global_batch(local_tree, sharding: NamedSharding):
    """Assembles per-process host arrays (this process's rows) into global jax.Arrays."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree)
