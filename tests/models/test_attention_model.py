"""The transformer with ``attention_impl`` = blockwise / pallas / cudnn against "reference" on a
packed rollout-tree batch: same logits, same parameter gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arpo_jax.models.config import ModelConfig
from arpo_jax.models.transformer import Transformer
from tests.models.test_attention_kernels import random_forest_key_end

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, attention_block_q=8, attention_block_k=8)


def tree_batch(b: int, t: int, seed: int = 0):
    """Random forests packed depth-first, padded at the end → tokens, positions (depth), key_end,
    valid; each [B, T]."""
    rng = np.random.default_rng(seed)
    key_end, positions, valid = (np.zeros((b, t), np.int32) for _ in range(3))
    for row, n in enumerate(rng.integers(t // 2, t + 1, b)):
        key_end[row, :n], parent = random_forest_key_end(rng, n)
        for i in range(n):
            positions[row, i] = 0 if parent[i] < 0 else positions[row, parent[i]] + 1
        valid[row, :n] = 1
    tokens = rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32)
    return tuple(jnp.asarray(x) for x in (tokens, positions, key_end, valid))


def _logits_and_grads(impl: str, batch, **overrides):
    model = Transformer(CFG.replace(attention_impl=impl, **overrides), rngs=nnx.Rngs(0))
    tokens, positions, key_end, valid = batch

    @nnx.jit
    def run(model):
        def loss(model):
            logits = model(tokens, positions=positions, key_end=key_end)
            return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * valid), logits
        return nnx.grad(loss, has_aux=True)(model)

    grads, logits = run(model)
    return logits, jax.tree.leaves(grads)


@pytest.fixture(scope="module")
def reference():
    batch = tree_batch(2, 21)
    return batch, _logits_and_grads("reference", batch)


@pytest.mark.parametrize("impl, overrides", [("blockwise", {}), ("blockwise", {"remat": True}),
                                             ("cudnn", {})])  # on CPU "cudnn" resolves to blockwise
def test_model_matches_reference_on_tree_batch(reference, impl, overrides):
    batch, (want_logits, want_grads) = reference
    logits, grads = _logits_and_grads(impl, batch, **overrides)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits), atol=1e-5)
    assert len(grads) == len(want_grads)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_pallas_model_logits_match_reference():
    tokens, positions, key_end, _ = tree_batch(1, 12, seed=1)
    forward = nnx.jit(lambda m: m(tokens, positions=positions, key_end=key_end))
    run = lambda impl: forward(Transformer(CFG.replace(attention_impl=impl), rngs=nnx.Rngs(0)))  # noqa: E731
    np.testing.assert_allclose(np.asarray(run("pallas")), np.asarray(run("reference")), atol=1e-5)


def test_attention_mask_path_runs_blockwise():
    """The causal+padding (``attention_mask``) input through the blockwise core: real tokens match."""
    tokens = jax.random.randint(jax.random.key(2), (2, 11), 0, CFG.vocab_size)
    am = jnp.asarray([[0, 0, 0] + [1] * 8, [1] * 7 + [0] * 4])
    forward = nnx.jit(lambda m: m(tokens, attention_mask=am))
    run = lambda impl: forward(Transformer(CFG.replace(attention_impl=impl), rngs=nnx.Rngs(0)))  # noqa: E731
    np.testing.assert_allclose(np.asarray(run("blockwise")), np.asarray(run("reference")), atol=1e-5)
