"""Sharded loading and forward on 8 fake CPU devices equal the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from arpo_jax.models import create_model, load_hf, make_mesh
from arpo_jax.models.config import get_preset
from arpo_jax.models.sharding import BATCH, fit_spec, param_spec
from tests.models.hf_tiny import save_tiny

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (1, 2, 4)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    path = tmp_path_factory.mktemp("qwen2_shard")
    save_tiny("qwen2", path)
    return path


@pytest.fixture(scope="module")
def reference(ckpt):
    model, cfg = load_hf(ckpt)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 10)).astype(np.int32)
    return ids, np.asarray(model(jnp.asarray(ids)))


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_load_and_forward_match_single_device(ckpt, reference, shape):
    ids, ref = reference
    mesh = make_mesh(shape)
    model, cfg = load_hf(ckpt, mesh=mesh)
    q = model.layers[0].attn.q_proj[...]
    assert isinstance(q.sharding, NamedSharding) and q.sharding.mesh.shape == mesh.shape
    if shape == (1, 2, 4):  # q_proj [D, N, H] split over fsdp (D) and tensor (N)
        assert tuple(q.sharding.spec)[:2] == ("fsdp", "tensor")
        assert q.addressable_shards[0].data.shape == (cfg.hidden_size // 2, cfg.num_heads // 4, cfg.head_dim)

    @jax.jit
    def forward(model, tokens):
        return model(tokens)

    with jax.set_mesh(mesh):
        tokens = jax.device_put(jnp.asarray(ids), NamedSharding(mesh, fit_spec((BATCH,), ids.shape, mesh)))
        out = forward(model, tokens)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


def test_create_model_sharded_matches_unsharded():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    cfg = get_preset("qwen3-0.6b", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16)
    plain = create_model(cfg, seed=3)
    sharded = create_model(cfg, seed=3, mesh=make_mesh((2, 2, 2)))
    # same random stream; jit may fuse the init scaling differently (last-ulp differences)
    np.testing.assert_allclose(np.asarray(plain.embed[...]), np.asarray(sharded.embed[...]), atol=1e-7, rtol=0)
    assert tuple(sharded.embed[...].sharding.spec) == ("tensor", "fsdp")


def test_partition_rule_replicates_indivisible_dims():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = make_mesh((1, 2, 4))
    # 2 kv heads cannot be split 4 ways: replicate that dim, keep the fsdp split
    assert tuple(param_spec(("layers", 0, "attn", "k_proj"), (64, 2, 16), mesh)) == ("fsdp", None, None)
    assert tuple(param_spec(("layers", 0, "attn", "q_proj"), (64, 8, 16), mesh)) == ("fsdp", "tensor", None)
    assert tuple(param_spec(("final_norm", "scale"), (64,), mesh)) == (None,)


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="3 entries"):
        make_mesh((2, 2))
    with pytest.raises(ValueError, match="needs"):
        make_mesh((64, 1, 1))
    assert make_mesh((-1, 1, 1)).shape["data"] == jax.device_count()
