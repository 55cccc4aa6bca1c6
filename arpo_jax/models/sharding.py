"""One mesh (data, fsdp, tensor), partition rules for every parameter, activation specs.

Rows (batch) are split over ``data`` and ``fsdp``; parameters are split over ``fsdp``
(ZeRO-3 style) and ``tensor`` (Megatron style: heads / ffn columns / vocab). A dimension
that the mesh axis does not divide is replicated instead, so small models and odd head
counts still run on any mesh. Activation constraints are no-ops when no mesh is set
(``jax.set_mesh``), so the same code serves one CPU and a TPU pod.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

ACT_BTD = P(BATCH, None, None)  # [B, T, D]
ACT_LOGITS = P(BATCH, None, "tensor")  # [B, T, V]
ROWS = P(BATCH)  # [B] / leading batch dim of anything per row

# Parameter rules keyed by the last path element (our module tree names).
PARAM_RULES: dict[str, tuple] = {
    "embed": ("tensor", "fsdp"),  # [V, D]
    "lm_head": ("fsdp", "tensor"),  # [D, V]
    "q_proj": ("fsdp", "tensor", None),  # [D, N, H]
    "k_proj": ("fsdp", "tensor", None),  # [D, K, H]
    "v_proj": ("fsdp", "tensor", None),  # [D, K, H]
    "o_proj": ("tensor", None, "fsdp"),  # [N, H, D]
    "q_bias": ("tensor", None),  # [N, H]
    "k_bias": ("tensor", None),  # [K, H]
    "v_bias": ("tensor", None),  # [K, H]
    "o_bias": (None,),  # [D]
    "gate_proj": ("fsdp", "tensor"),  # [D, F]
    "up_proj": ("fsdp", "tensor"),  # [D, F]
    "down_proj": ("tensor", "fsdp"),  # [F, D]
    "scale": (None,),  # RMSNorm [D] or [H]
}


def make_mesh(shape: Sequence[int] = (1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh. One entry of ``shape`` may be -1 (use the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    n = math.prod(shape)
    if n > len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {n} devices, only {len(devices)} available")
    grid = np.asarray(devices[:n], dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh, axis) -> int:
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[a] for a in names)


def fit_spec(spec: Sequence, shape: Sequence[int], mesh) -> P:
    """Drops (replicates) every axis of ``spec`` whose mesh size does not divide the dim."""
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    out = []
    for dim, axis in zip(shape, spec):
        if axis is None:
            out.append(None)
            continue
        if isinstance(axis, tuple):  # keep the largest prefix of a multi-axis entry that divides
            kept = tuple(a for a in axis if dim % _axis_size(mesh, a) == 0)
            while kept and dim % _axis_size(mesh, kept):
                kept = kept[:-1]
            out.append(kept if kept else None)
        else:
            out.append(axis if dim % _axis_size(mesh, axis) == 0 else None)
    return P(*out)


def param_spec(path: Sequence, shape: Sequence[int], mesh) -> P:
    """Partition spec of the parameter at ``path`` (tuple of names) with ``shape``."""
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    names = [n for n in names if n not in ("value", "raw_value")]
    rule = PARAM_RULES.get(names[-1]) if names else None
    if rule is None or len(rule) != len(shape):
        return P(*([None] * len(shape)))
    return fit_spec(rule, shape, mesh)


def state_shardings(state, mesh: Mesh):
    """A pytree like ``state`` (an ``nnx.State`` or dict of arrays) of ``NamedSharding``s."""
    def one(path, leaf):
        return NamedSharding(mesh, param_spec(path, leaf.shape, mesh))

    return jax.tree_util.tree_map_with_path(one, state)


def constrain(x: jax.Array, spec: P) -> jax.Array:
    """``with_sharding_constraint`` under the current mesh; a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh))


def rows_sharding(mesh: Mesh, ndim: int, batch: int) -> NamedSharding:
    """Sharding for a per-row array of rank ``ndim`` whose first dim is ``batch``."""
    return NamedSharding(mesh, fit_spec((BATCH,), (batch,) + (1,) * (ndim - 1), mesh))
