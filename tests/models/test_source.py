"""Model sources: dtypes given as names or JAX / NumPy dtypes, and ``build_model`` from a
checkpoint or a random initialisation."""

import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.models import ModelSourceConfig, build_model, dtype_name, load_hf, make_mesh, save_hf
from tests.models.hf_tiny import save_tiny


def test_dtype_name_accepts_names_and_dtypes():
    assert [dtype_name(x) for x in (None, "float32", jnp.float32, jnp.bfloat16, np.dtype("float32"), np.float16)] == [
        None, "float32", "float32", "bfloat16", "float32", "float16"]
    for bad in ("bf16", jnp.int32, object()):
        with pytest.raises(ValueError, match="is not supported"):
            dtype_name(bad)


def test_load_hf_and_save_hf_take_jax_dtypes(tmp_path):
    save_tiny("qwen2", tmp_path / "hf")
    model, cfg = load_hf(tmp_path / "hf", dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "float32")
    assert model.embed[...].dtype == jnp.float32
    save_hf(model, cfg, tmp_path / "bf16", dtype=jnp.bfloat16)
    _, back = load_hf(tmp_path / "bf16")
    assert back.param_dtype == "bfloat16"


def test_build_model_from_a_checkpoint_or_a_random_init(tmp_path):
    save_tiny("qwen2", tmp_path / "hf")
    mesh = make_mesh((1, 1, 1))
    _, mcfg = build_model(ModelSourceConfig(path=str(tmp_path / "hf"), remat=True, mesh=(1, 1, 1)), 999, mesh)
    assert mcfg.remat and mcfg.vocab_size == 160  # the checkpoint's vocabulary, not the tokenizer's
    assert mcfg.attention_impl == "reference"
    model, mcfg = build_model(ModelSourceConfig(path=str(tmp_path / "hf"), attention_impl="blockwise",
                                                mesh=(1, 1, 1)), 999, mesh)
    assert model.cfg.attention_impl == mcfg.attention_impl == "blockwise" and not mcfg.remat
    src = ModelSourceConfig(config=dict(family="qwen2", hidden_size=16, intermediate_size=32, num_layers=1,
                                        num_heads=2, num_kv_heads=1, head_dim=8), tokenizer="tok", dtype="bfloat16",
                            attention_impl="blockwise")
    model, mcfg = build_model(src, 48, mesh)
    assert (mcfg.vocab_size, mcfg.dtype, src.tokenizer_dir, mcfg.attention_impl) == (48, "bfloat16", "tok",
                                                                                      "blockwise")
    assert model.embed[...].shape == (48, 16)
    with pytest.raises(ValueError, match="not both"):
        ModelSourceConfig(path="x", preset="qwen2.5-0.5b")
