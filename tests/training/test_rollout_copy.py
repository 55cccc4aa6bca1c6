"""The rollout's copy of the policy on one process: fp32 master weights are read by the
memory-bound decode in the compute dtype (a cast copy, freed after the rollout); weights
already in the compute dtype are shared, not copied."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arpo_jax.models import create_model, get_preset, make_mesh
from arpo_jax.models.sharding import state_shardings
from arpo_jax.training.distributed import is_copied, local_copy

CFG = get_preset("qwen2.5-0.5b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                 num_heads=4, num_kv_heads=2, head_dim=8, dtype="bfloat16")


def test_one_process_copy_is_in_the_compute_dtype_and_shares_what_it_can():
    mesh = make_mesh((1, 2, 2), jax.devices()[:4])
    params = nnx.split(create_model(CFG, seed=0, mesh=mesh))[1]
    assert is_copied(params, jnp.bfloat16) and not is_copied(params, jnp.float32) and not is_copied(params, None)
    copy = local_copy(params, mesh, jnp.bfloat16)
    for orig, new, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(copy),
                                   jax.tree.leaves(state_shardings(params, mesh))):
        assert new.dtype == jnp.bfloat16 and new.sharding.is_equivalent_to(sharding, new.ndim)
        np.testing.assert_array_equal(np.asarray(new), np.asarray(orig.astype(jnp.bfloat16)))
    same = local_copy(params, mesh, jnp.float32)
    assert all(a is b for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)))
