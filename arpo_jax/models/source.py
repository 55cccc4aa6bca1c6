"""Where a run's model comes from: ``ModelSourceConfig`` (the ``model`` section of the SFT, RL
and eval configs) and ``build_model``, which loads it from a checkpoint or initialises it.

A checkpoint is a HF directory (``load_hf``) or an arpo_jax one (``load_native``); a random
initialisation is a preset and/or ``ModelConfig`` fields, its vocabulary the tokenizer's by
default. The tokenizer itself is loaded by ``arpo_jax.data.load_tokenizer`` from
``ModelSourceConfig.tokenizer_dir``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from arpo_jax.models.config import ModelConfig, get_preset
from arpo_jax.models.hf_io import create_model, load_hf
from arpo_jax.models.sharding import state_shardings
from arpo_jax.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class ModelSourceConfig:
    """Where the model and tokenizer come from.

    path: HF checkpoint directory (``load_hf``) or arpo_jax checkpoint (``load_native``).
    preset / config: random initialisation from a preset name and/or ``ModelConfig`` fields
      (e.g. ``{hidden_size: 64, num_layers: 2}``); ``vocab_size`` defaults to the tokenizer's.
    tokenizer: tokenizer directory (default: ``path``).
    dtype / param_dtype: compute and storage dtypes ("float32" or "bfloat16").
    init_seed: seed of the random initialisation.
    mesh: (data, fsdp, tensor) device mesh shape; -1 = the remaining devices.
    remat: recompute each layer's activations in the backward pass.
    attention_impl: the no-cache attention core (``ModelConfig.attention_impl``: "reference",
      "blockwise", "pallas", "cudnn"); None keeps the checkpoint's / preset's.
    """

    path: str | None = None
    preset: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: str | None = None
    dtype: str | None = None
    param_dtype: str | None = None
    init_seed: int = 0
    mesh: tuple[int, int, int] = (1, -1, 1)
    remat: bool = False
    attention_impl: str | None = None

    def __post_init__(self):
        if self.path and (self.preset or self.config):
            raise ValueError("set model.path (a checkpoint) or model.preset/model.config (random init), not both")
        if not (self.path or self.preset or self.config):
            raise ValueError("set model.path (a checkpoint) or model.preset/model.config (random init)")
        if not (self.tokenizer or self.path):
            raise ValueError("model.tokenizer is required when the model is randomly initialised")

    @property
    def tokenizer_dir(self) -> str:
        """The tokenizer directory: ``tokenizer``, else the checkpoint ``path``."""
        return self.tokenizer or self.path


def load_checkpoint(path: str | Path, *, dtype=None, param_dtype=None,
                    mesh: Mesh | None = None) -> tuple[Transformer, ModelConfig]:
    """(model, config) of an arpo_jax checkpoint (``load_native``: its own dtypes) or a HF one
    (``load_hf`` with these dtypes), sharded on ``mesh`` when given."""
    from arpo_jax.models.native_io import is_native_checkpoint, load_native

    if is_native_checkpoint(path):
        return load_native(path, mesh=mesh)
    return load_hf(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh)


def model_config(src: ModelSourceConfig, vocab_size: int) -> ModelConfig | None:
    """The random-init ``ModelConfig`` (None when the model is loaded from ``src.path``);
    ``vocab_size`` (the tokenizer's) unless ``src.config`` sets one."""
    if src.path:
        return None
    fields = dict(src.config)
    fields.setdefault("vocab_size", vocab_size)
    for k in ("dtype", "param_dtype"):
        if getattr(src, k):
            fields[k] = getattr(src, k)
    fields["remat"] = src.remat
    if src.attention_impl:
        fields["attention_impl"] = src.attention_impl
    try:
        return get_preset(src.preset, **fields) if src.preset else ModelConfig(**fields)
    except TypeError as e:
        raise ValueError(f"model.config: {e}") from None


def build_model(src: ModelSourceConfig, vocab_size: int, mesh: Mesh) -> tuple[Transformer, ModelConfig]:
    """A fresh model: loaded from ``src.path`` or randomly initialised (``model_config``),
    sharded on ``mesh``."""
    if src.path:
        model, mcfg = load_checkpoint(src.path, dtype=src.dtype, param_dtype=src.param_dtype, mesh=mesh)
        if src.remat or src.attention_impl:  # only Transformer.__call__ reads these two
            model.cfg = mcfg = mcfg.replace(remat=src.remat or mcfg.remat,
                                            attention_impl=src.attention_impl or mcfg.attention_impl)
        return model, mcfg
    mcfg = model_config(src, vocab_size)
    if mesh.size > 1:
        return create_model(mcfg, seed=src.init_seed, mesh=mesh), mcfg
    # One device: eager init (its ops are cached across runs) instead of compiling the initializer.
    model = create_model(mcfg, seed=src.init_seed)
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh))), mcfg
