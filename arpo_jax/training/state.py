"""What a training run carries from step to step and through its checkpoints: ``TrainState``.

The checkpointed arrays are ``{"params", "opt_state", "rng"}``; the checkpoint's ``meta``
carries the ``ModelConfig`` they belong to, so a run restores its own model whatever
``model.path`` / ``model.config`` say now (``restore_train_state``: the abstract target is built
from that config, with the shardings of this run's mesh, before anything is read).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arpo_jax.models import ModelConfig, Transformer
from arpo_jax.models.sharding import state_shardings
from arpo_jax.training.checkpoint import Checkpointer


@dataclasses.dataclass
class TrainState:
    """The model being trained and where the run is.

    graphdef / params: the NNX graph and its parameters (sharded on the run's mesh).
    opt_state: the optimizer state, sharded like the parameters.
    rng: uint32 [2] key data, replicated (carried for loops that draw random numbers).
    step: updates done so far (steps count from 1). mcfg: the model's config.
    """

    graphdef: Any
    params: Any
    opt_state: Any
    rng: jax.Array
    step: int
    mcfg: ModelConfig

    def model(self) -> Transformer:
        """The current model as an NNX module (shares the state's arrays)."""
        return nnx.merge(self.graphdef, self.params)

    def arrays(self) -> dict[str, Any]:
        """The checkpointed pytree."""
        return {"params": self.params, "opt_state": self.opt_state, "rng": self.rng}


def replicated_key(seed: int, mesh: Mesh) -> jax.Array:
    """Key data uint32 [2] of ``jax.random.key(seed)``, replicated over ``mesh`` (every process
    builds its own copy, so it also works across hosts)."""
    key = np.asarray(jax.random.key_data(jax.random.key(seed)))
    return jax.make_array_from_callback(key.shape, NamedSharding(mesh, P()), lambda i: key[i])


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_train_state(mcfg: ModelConfig, optimizer, mesh: Mesh) -> tuple[Any, dict]:
    """(graphdef, abstract {"params", "opt_state", "rng"}) with the target shardings, for restore."""
    graphdef, abs_params = nnx.split(nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0))))
    abs_params = _with_shardings(abs_params, state_shardings(abs_params, mesh))
    abs_opt = jax.eval_shape(optimizer.init, abs_params)
    abs_opt = _with_shardings(abs_opt, state_shardings(abs_opt, mesh))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))
    return graphdef, {"params": abs_params, "opt_state": abs_opt, "rng": rng}


def init_train_state(model: Transformer, mcfg: ModelConfig, optimizer, mesh: Mesh, seed: int) -> TrainState:
    """Step 0 of a fresh run: ``model``'s parameters, a new optimizer state sharded like them."""
    graphdef, params = nnx.split(model)
    opt_state = optimizer.init(params)
    opt_state = jax.device_put(opt_state, state_shardings(opt_state, mesh))
    return TrainState(graphdef, params, opt_state, replicated_key(seed, mesh), 0, mcfg)


def restore_train_state(ckpt: Checkpointer, step: int | None, optimizer, mesh: Mesh) -> tuple[TrainState, dict]:
    """(state, meta) of checkpoint ``step`` (None: the latest valid one), restored straight into
    this mesh's shardings for the model config the checkpoint's ``meta`` names."""
    built = {}

    def target(meta):  # called by the Checkpointer with each candidate step's meta
        built["mcfg"] = ModelConfig(**meta["model_config"])
        built["graphdef"], abstract = abstract_train_state(built["mcfg"], optimizer, mesh)
        return abstract

    restored = ckpt.restore(target, step=step)
    s = restored.state
    state = TrainState(built["graphdef"], s["params"], s["opt_state"], s["rng"], restored.step, built["mcfg"])
    return state, restored.meta
