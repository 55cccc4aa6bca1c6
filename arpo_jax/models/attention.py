"""Attention cores: what the transformer's layers call once q, k, v are projected and rotated.

Shapes: B batch, T queries, S keys, N query heads, K kv heads, G = N // K, H head dim.

The mask contract. Without a cache, visibility is an *interval mask*: key k of row b is
visible to query q exactly when ``k <= q < key_end[b, k]``. One integer per key expresses
causal attention (``key_end = T``), padding (``key_end[k] = 0`` hides key k) and rollout
trees packed depth-first (``key_end[k]`` = end of k's subtree: its descendants are the
contiguous tokens after it). With a cache the mask is a dense [B, T, S] boolean built by
the caller (decode/prefill over cache windows).

``reference_attention`` is the plain einsum with a materialised [B, K, G, T, S] score tensor:
the definition every other implementation is tested against (``attention_blockwise``,
``attention_pallas``; ``attention_backends`` picks one from ``ModelConfig.attention_impl``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def interval_mask(key_end: jax.Array, num_queries: int | None = None) -> jax.Array:
    """key_end [B, S] int → bool [B, T, S]: query q sees key k iff k <= q < key_end[b, k]."""
    s = key_end.shape[1]
    t = s if num_queries is None else num_queries
    q = jnp.arange(t, dtype=jnp.int32)[None, :, None]
    k = jnp.arange(s, dtype=jnp.int32)[None, None, :]
    return (k <= q) & (q < key_end[:, None, :].astype(jnp.int32))


def causal_key_end(attention_mask: jax.Array) -> jax.Array:
    """[B, T] 1/0 (real/padding) → key_end [B, T]: real keys visible to every later query,
    padded keys to none (the causal mask with padding, as an interval mask)."""
    t = attention_mask.shape[1]
    return jnp.where(attention_mask.astype(bool), t, 0).astype(jnp.int32)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention. q [B, T, N, H]; k, v [B, S, K, H]; mask [B, T, S] bool (True =
    visible) → [B, T, N, H] in q's dtype. Scores and softmax in fp32; a query that sees no key
    gets a uniform average (never NaN)."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, t, kh, n // kh, h)  # [B, T, K, G, H]
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(h)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(q.dtype)).reshape(b, t, n, h)
