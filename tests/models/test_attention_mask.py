"""The interval-mask contract of ``models.attention`` and the transformer's ``key_end`` input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arpo_jax.models.attention import causal_key_end, interval_mask
from arpo_jax.models.config import ModelConfig
from arpo_jax.models.transformer import Transformer


def test_interval_mask_is_causal_with_padding():
    am = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = np.asarray(interval_mask(causal_key_end(am)))
    causal = np.tril(np.ones((4, 4), bool))
    want = causal[None] & np.asarray(am, bool)[:, None, :]
    np.testing.assert_array_equal(got, want)


def _tiny():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def test_key_end_equals_attention_mask_path():
    model = _tiny()
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 64)
    am = jnp.asarray([[1] * 6, [1, 1, 1, 1, 0, 0]])
    positions = jnp.maximum(jnp.cumsum(am, 1) - 1, 0)
    want = model(tokens, attention_mask=am)
    got = model(tokens, positions=positions, key_end=causal_key_end(am))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_key_end_packs_a_tree():
    """Prompt [a b], then two children [c] and [d] packed depth-first: d must not see c, and
    sees the prompt at its own positions — the same logits as the unpacked sequence."""
    model = _tiny()
    a, b, c, d = 3, 5, 7, 11
    packed = jnp.asarray([[a, b, c, d]])
    key_end = jnp.asarray([[4, 4, 3, 4]])  # c's subtree ends before d
    positions = jnp.asarray([[0, 1, 2, 2]])
    out = model(packed, positions=positions, key_end=key_end)
    seq_d = model(jnp.asarray([[a, b, d]]))
    seq_c = model(jnp.asarray([[a, b, c]]))
    np.testing.assert_allclose(np.asarray(out[0, 3]), np.asarray(seq_d[0, 2]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[0, 2]), np.asarray(seq_c[0, 2]), atol=1e-5)


def test_key_end_needs_positions():
    with pytest.raises(ValueError, match="positions"):
        _tiny()(jnp.zeros((1, 3), jnp.int32), key_end=jnp.full((1, 3), 3))
