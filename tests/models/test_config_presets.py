"""Presets carry the real sizes; from_hf_config reads HF configs; bf16 runs."""

import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.models import ModelConfig, create_model, get_preset
from tests.models.hf_tiny import tiny_hf_config

# Parameter counts of the released checkpoints (model cards / safetensors totals).
KNOWN_PARAMS = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "qwen3-8b": 8_190_735_360,
}


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMS))
def test_preset_parameter_counts(name):
    assert get_preset(name).num_params() == KNOWN_PARAMS[name]


def test_all_presets_build_and_unknown_is_clear():
    for name in ("Qwen2.5-1.5B-Instruct", "qwen2.5-3b", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-14b",
                 "llama-3.2-3b"):
        assert get_preset(name).num_layers > 0
    with pytest.raises(KeyError, match="unknown model preset 'gpt2'"):
        get_preset("gpt2")


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_from_hf_config(family):
    cfg = ModelConfig.from_hf_config(tiny_hf_config(family))
    assert cfg.family == family
    assert cfg.qkv_bias == (family == "qwen2")
    assert cfg.qk_norm == (family == "qwen3")
    assert cfg.head_dim == (24 if family == "qwen3" else 16)
    if family == "llama":
        assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0


def test_bf16_forward_close_to_fp32():
    cfg = get_preset("qwen2.5-0.5b", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16)
    m32 = create_model(cfg, seed=0)
    m16 = create_model(cfg.replace(param_dtype="bfloat16", dtype="bfloat16"), seed=0)
    assert m16.embed[...].dtype == jnp.bfloat16
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 6)), jnp.int32)
    out32, out16 = m32(ids), m16(ids)
    assert out16.dtype == jnp.float32  # logits are always fp32
    np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), atol=5e-2)


def test_remat_same_logits_and_grads():
    import jax
    from flax import nnx

    cfg = get_preset("qwen3-0.6b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=2, num_kv_heads=1, head_dim=16)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 5)), jnp.int32)

    def grads(model):
        return nnx.grad(lambda m: m(ids).sum())(model)

    g1 = grads(create_model(cfg, seed=1))
    g2 = grads(create_model(cfg.replace(remat=True), seed=1))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float8")
