"""The paged KV cache of ``models.paged_cache``: page writes and gathers against numpy, the
Pallas TPU decode kernel (interpret mode, on CPU) against the pure-JAX reference, and the
transformer's paged cache branch against a forward without cache."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.pallas import tpu as pltpu

from arpo_jax.models.attention import reference_attention
from arpo_jax.models.config import ModelConfig
from arpo_jax.models.paged_cache import (PagedKVCache, gather_pages, init_paged_pools, pallas_decode_attention,
                                         paged_reference_attention, write_pages)
from arpo_jax.models.transformer import Transformer

K, P, Z, H, N = 2, 10, 8, 16, 4  # kv heads, pages, page size, head dim, query heads (GQA: 2 per kv head)
# rows 0, 1 and 3 share page 1; row 2 owns 4 pages; unused entries are 0
TABLE = np.array([[1, 2, 0, 0], [1, 2, 3, 0], [4, 5, 6, 7], [1, 9, 8, 3]], np.int32)
LENGTHS = np.array([3, 17, 32, 25], np.int32)  # ragged, partial last pages (32: exactly full)


def _pools(seed, bf16_exact=False):
    rng = np.random.default_rng(seed)
    k, v = (rng.standard_normal((K, P, Z, H)).astype(np.float32) for _ in range(2))
    if bf16_exact:  # values a bfloat16 holds exactly
        k, v = (np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32)) for x in (k, v))
    return k, v


def test_write_and_gather_match_numpy():
    pool, _ = _pools(0)
    positions = np.array([[3, 4], [17, 18], [8, 9], [24, 25]], np.int32)  # [B, T]
    valid = np.array([[True, True], [True, False], [True, True], [False, False]])
    new = np.random.default_rng(1).standard_normal((4, 2, K, H)).astype(np.float32)  # [B, T, K, H]
    got = np.asarray(write_pages(jnp.asarray(pool), jnp.asarray(TABLE), jnp.asarray(positions), jnp.asarray(valid),
                                 jnp.asarray(new)))
    want = pool.copy()
    for b, t in zip(*np.nonzero(valid)):
        p = positions[b, t]
        want[:, TABLE[b, p // Z], p % Z] = new[b, t]
    np.testing.assert_array_equal(got, want)
    rows = np.asarray(gather_pages(jnp.asarray(got), jnp.asarray(TABLE)))  # [B, W, K, H]
    for b in range(4):
        for p in range(TABLE.shape[1] * Z):
            np.testing.assert_array_equal(rows[b, p], got[:, TABLE[b, p // Z], p % Z])


def test_paged_reference_is_attention_over_the_gathered_rows():
    k, v = _pools(2)
    q = np.random.default_rng(3).standard_normal((4, 3, N, H)).astype(np.float32)  # 3 queries per row
    positions = LENGTHS[:, None] - 3 + np.arange(3)[None]
    got = paged_reference_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(TABLE),
                                    jnp.asarray(positions))
    kk = np.stack([np.concatenate([k[:, p] for p in row], 1).transpose(1, 0, 2) for row in TABLE])  # [B, W, K, H]
    vv = np.stack([np.concatenate([v[:, p] for p in row], 1).transpose(1, 0, 2) for row in TABLE])
    mask = np.arange(kk.shape[1])[None, None, :] <= positions[:, :, None]
    want = reference_attention(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(vv), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_pallas_kernel_matches_reference_in_interpret_mode():
    """The shipped TPU kernel casts the pages it loads to bfloat16 (``_maybe_dequantize``), so
    the pools hold bf16-exact values: then it must equal the fp32 reference within 1e-5."""
    k, v = _pools(4, bf16_exact=True)
    q = jnp.asarray(np.random.default_rng(5).standard_normal((4, 1, N, H)), jnp.float32)
    args = (jnp.asarray(k), jnp.asarray(v), jnp.asarray(TABLE))
    want = paged_reference_attention(q, *args, jnp.asarray(LENGTHS - 1)[:, None])
    with pltpu.force_tpu_interpret_mode():
        got = pallas_decode_attention(q, *args, jnp.asarray(LENGTHS))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_pallas_gpu_kernel_matches_reference_in_interpret_mode():
    """The GPU kernel (``pallas.ops.gpu.paged_attention``, query heads padded to 16 per kv
    head) keeps fp32 pages: equal to the reference within 1e-5 on any fp32 values."""
    k, v = _pools(6)
    q = jnp.asarray(np.random.default_rng(7).standard_normal((4, 1, N, H)), jnp.float32)
    args = (jnp.asarray(k), jnp.asarray(v), jnp.asarray(TABLE))
    want = paged_reference_attention(q, *args, jnp.asarray(LENGTHS - 1)[:, None])
    got = pallas_decode_attention(q, *args, jnp.asarray(LENGTHS), backend="gpu", interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_transformer_paged_cache_matches_forward_without_cache():
    """Ragged prefill (row 1 writes 3 of 5 tokens) then a decode step, pages shuffled in the
    pool: the logits equal a full forward's."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 6), 0, 64))
    k, v = init_paged_pools(cfg.num_layers, 8, 4, cfg.num_kv_heads, cfg.head_dim, jnp.float32)
    table = jnp.asarray([[5, 2], [7, 0]], jnp.int32)  # [B, Wp]: 8 positions per row
    cache = PagedKVCache(k=k, v=v, page_table=table, lengths=jnp.zeros(2, jnp.int32))
    _, cache = model(jnp.asarray(tokens[:, :5]), cache=cache, num_new=jnp.asarray([5, 3]))
    assert cache.lengths.tolist() == [5, 3]
    step = jnp.asarray([[tokens[0, 5]], [tokens[1, 3]]])
    logits, cache = model(step, cache=cache)
    full = np.asarray(model(jnp.asarray(tokens)))
    np.testing.assert_allclose(np.asarray(logits)[0, 0], full[0, 5], atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits)[1, 0], full[1, 3], atol=1e-5)
    assert cache.lengths.tolist() == [6, 4]
