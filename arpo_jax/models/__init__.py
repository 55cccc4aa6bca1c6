"""Decoder models (Qwen2/2.5, Qwen3, Llama-3), KV cache, HF import/export, sharding, model sources."""

from arpo_jax.models.config import PRESETS, ModelConfig, UnsupportedModelError, dtype_name, get_preset
from arpo_jax.models.hf_io import CheckpointError, create_model, load_hf, save_hf
from arpo_jax.models.sharding import MESH_AXES, make_mesh, state_shardings
from arpo_jax.models.source import ModelSourceConfig, build_model, load_checkpoint, model_config
from arpo_jax.models.transformer import KVCache, Transformer, init_cache

__all__ = [
    "PRESETS", "ModelConfig", "UnsupportedModelError", "dtype_name", "get_preset", "CheckpointError", "create_model",
    "load_hf", "save_hf", "MESH_AXES", "make_mesh", "state_shardings", "ModelSourceConfig", "build_model",
    "load_checkpoint", "model_config", "KVCache", "Transformer", "init_cache",
]
