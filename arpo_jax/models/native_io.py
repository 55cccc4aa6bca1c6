"""arpo_jax's own checkpoint format: an orbax PyTree checkpoint of the parameters plus
``arpo_config.json`` (the ModelConfig). Restores straight into the target shardings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arpo_jax.models.config import ModelConfig
from arpo_jax.models.hf_io import CheckpointError, _abstract
from arpo_jax.models.sharding import state_shardings
from arpo_jax.models.transformer import Transformer

CONFIG_NAME = "arpo_config.json"
PARAMS_DIR = "params"


def is_native_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / PARAMS_DIR).is_dir()


def save_native(model: Transformer, cfg: ModelConfig, path: str | Path) -> Path:
    """Writes the parameters (orbax) and the config to directory ``path``."""
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / PARAMS_DIR, params, force=True)
    (path / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return path


def load_native(path: str | Path, *, mesh: Mesh | None = None) -> tuple[Transformer, ModelConfig]:
    """Reads a checkpoint written by ``save_native``, sharded on ``mesh`` when given."""
    path = Path(path).absolute()
    if not is_native_checkpoint(path):
        raise CheckpointError(f"{str(path)!r} is not an arpo_jax checkpoint (needs {CONFIG_NAME} and {PARAMS_DIR}/)")
    try:
        cfg = ModelConfig(**json.loads((path / CONFIG_NAME).read_text()))
    except TypeError as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None
    graphdef, abstract_state = _abstract(cfg)
    if mesh is None:
        device = jax.devices()[0]
        mesh = Mesh([device], ("d",))
        shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_state)
    else:
        shardings = state_shardings(abstract_state, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
    target = nnx.to_pure_dict(target)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(path / PARAMS_DIR, target)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path / PARAMS_DIR}: does not match the config's architecture ({e})") from None
    nnx.replace_by_pure_dict(abstract_state, params)
    return nnx.merge(graphdef, abstract_state), cfg
