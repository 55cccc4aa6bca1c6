"""Decoder models (Qwen2/2.5, Qwen3, Llama-3), KV cache, HF import/export, sharding."""

from arpo_jax.models.config import PRESETS, ModelConfig, UnsupportedModelError, get_preset
from arpo_jax.models.hf_io import CheckpointError, create_model, load_hf, save_hf
from arpo_jax.models.sharding import MESH_AXES, make_mesh, state_shardings
from arpo_jax.models.transformer import KVCache, Transformer, init_cache

__all__ = [
    "PRESETS", "ModelConfig", "UnsupportedModelError", "get_preset", "CheckpointError", "create_model",
    "load_hf", "save_hf", "MESH_AXES", "make_mesh", "state_shardings", "KVCache", "Transformer", "init_cache",
]
