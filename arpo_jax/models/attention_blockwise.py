"""Blockwise (flash-style) attention under the interval mask, in plain JAX.

Shapes: B batch, T queries, S keys (T == S: the queries are the keys' own tokens), N query
heads, K kv heads, G = N // K, H head dim, Q / C one query / key block (``block_q`` /
``block_k`` tokens). Inside, q is laid out [B, K, G, T, H] and k, v [B, K, S, H].

The mask is ``models.attention``'s interval mask: key k is visible to query q exactly when
``k <= q < key_end[b, k]``. The forward walks query blocks and, for each, the key blocks up to
its last query with a running max ``m``, denominator ``l`` and unnormalised output (online
softmax); a key block in which no key is visible to any query of the block is skipped
(``lax.cond``). The backward (``jax.custom_vjp``) saves only the output and the log-sum-exp
[B, N, T] and recomputes each block's scores, so neither pass holds a [T, S] buffer.

A query that sees no key (a padding query) gets the mean of v over all S keys, as
``reference_attention`` gives it; its gradient flows to v only, as there.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from arpo_jax.models.attention import NEG_INF

DEFAULT_BLOCK = 512

# core(q [B,K,G,T,H], k [B,K,S,H], v [B,K,S,H], key_end [B,S], block_q, block_k) -> [B,K,G,T,H]
Core = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, int, int], jax.Array]


def block_live(q0, block_q: int, k0, key_end_blk: jax.Array) -> jax.Array:
    """Whether any key of the block starting at k0 (key_end_blk [B, C]) is visible to any query
    in [q0, q0 + block_q), in any row: some k with k <= q_last and key_end[k] > max(k, q0)."""
    kpos = k0 + jnp.arange(key_end_blk.shape[1], dtype=jnp.int32)  # [C]
    return jnp.any((kpos <= q0 + block_q - 1) & (key_end_blk > jnp.maximum(kpos, q0)))


def block_mask(q0, block_q: int, k0, key_end_blk: jax.Array) -> jax.Array:
    """The interval mask of one (query block, key block) pair → bool [B, 1, 1, Q, C]."""
    qpos = q0 + jnp.arange(block_q, dtype=jnp.int32)[:, None]  # [Q, 1]
    kpos = k0 + jnp.arange(key_end_blk.shape[1], dtype=jnp.int32)[None, :]  # [1, C]
    visible = (kpos <= qpos) & (qpos < key_end_blk[:, None, :])  # [B, Q, C]
    return visible[:, None, None]


def _forward_block_row(q, k, v, key_end, i, block_q: int, block_k: int):
    """Query block i against every live key block → (out [B,K,G,Q,H] fp32, lse [B,K,G,Q])."""
    b, kh, g, _, h = q.shape
    q0 = i * block_q
    qi = lax.dynamic_slice_in_dim(q, q0, block_q, axis=3)  # [B, K, G, Q, H]
    scale = 1.0 / math.sqrt(h)

    def update(j, carry):
        m, l, acc = carry
        k0 = j * block_k
        ke = lax.dynamic_slice_in_dim(key_end, k0, block_k, axis=1)  # [B, C]
        kj = lax.dynamic_slice_in_dim(k, k0, block_k, axis=2)  # [B, K, C, H]
        vj = lax.dynamic_slice_in_dim(v, k0, block_k, axis=2)
        mask = block_mask(q0, block_q, k0, ke)
        s = jnp.einsum("BKGQH,BKCH->BKGQC", qi, kj, preferred_element_type=jnp.float32) * scale
        s = jnp.where(mask, s, NEG_INF)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)  # [B, K, G, Q, C]
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum("BKGQC,BKCH->BKGQH", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
        return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv

    def body(j, carry):
        ke = lax.dynamic_slice_in_dim(key_end, j * block_k, block_k, axis=1)
        return lax.cond(block_live(q0, block_q, j * block_k, ke), functools.partial(update, j), lambda c: c, carry)

    init = (jnp.full((b, kh, g, block_q), NEG_INF, jnp.float32), jnp.zeros((b, kh, g, block_q), jnp.float32),
            jnp.zeros((b, kh, g, block_q, h), jnp.float32))
    num_key_blocks = (q0 + block_q - 1) // block_k + 1  # key blocks starting at or before the last query
    m, l, acc = lax.fori_loop(0, num_key_blocks, body, init)
    l_safe = jnp.maximum(l, 1e-30)  # l == 0 only for queries that see no key: out 0, filled in later
    return acc / l_safe[..., None], m + jnp.log(l_safe)


def flash_forward(q, k, v, key_end, block_q: int, block_k: int):
    """Online-softmax forward. q [B,K,G,T,H], k/v [B,K,S,H], key_end [B,S] (T, S multiples of
    the blocks) → (out [B,K,G,T,H] in q's dtype, 0 for queries that see nothing; lse [B,K,G,T])."""
    nq = q.shape[3] // block_q
    out, lse = lax.map(lambda i: _forward_block_row(q, k, v, key_end, i, block_q, block_k), jnp.arange(nq))
    out = jnp.moveaxis(out, 0, 3)  # [B, K, G, nq, Q, H]
    lse = jnp.moveaxis(lse, 0, 3)  # [B, K, G, nq, Q]
    b, kh, g, _, _, h = out.shape
    return out.reshape(b, kh, g, -1, h).astype(q.dtype), lse.reshape(b, kh, g, -1)


def _backward_key_block(res, dq, j, block_q: int, block_k: int):
    """Key block j against every live query block → (dq updated, dk_j [B,K,C,H], dv_j)."""
    q, k, v, key_end, dout, lse, delta = res
    b, kh, g, t, h = q.shape
    k0 = j * block_k
    kj = lax.dynamic_slice_in_dim(k, k0, block_k, axis=2)  # [B, K, C, H]
    vj = lax.dynamic_slice_in_dim(v, k0, block_k, axis=2)
    ke = lax.dynamic_slice_in_dim(key_end, k0, block_k, axis=1)  # [B, C]
    scale = 1.0 / math.sqrt(h)

    def update(i, carry):
        dq, dk, dv = carry
        q0 = i * block_q
        qi, doi = (lax.dynamic_slice_in_dim(x, q0, block_q, axis=3) for x in (q, dout))  # [B, K, G, Q, H]
        lse_i, delta_i = (lax.dynamic_slice_in_dim(x, q0, block_q, axis=3) for x in (lse, delta))  # [B, K, G, Q]
        s = jnp.einsum("BKGQH,BKCH->BKGQC", qi, kj, preferred_element_type=jnp.float32) * scale
        p = jnp.where(block_mask(q0, block_q, k0, ke), jnp.exp(s - lse_i[..., None]), 0.0)  # [B, K, G, Q, C]
        dv = dv + jnp.einsum("BKGQC,BKGQH->BKCH", p, doi, preferred_element_type=jnp.float32)
        dp = jnp.einsum("BKGQH,BKCH->BKGQC", doi, vj, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_i[..., None]) * scale
        dk = dk + jnp.einsum("BKGQC,BKGQH->BKCH", ds, qi, preferred_element_type=jnp.float32)
        dq_i = jnp.einsum("BKGQC,BKCH->BKGQH", ds, kj, preferred_element_type=jnp.float32)
        dq = lax.dynamic_update_slice_in_dim(dq, lax.dynamic_slice_in_dim(dq, q0, block_q, axis=3) + dq_i, q0, 3)
        return dq, dk, dv

    def body(i, carry):
        return lax.cond(block_live(i * block_q, block_q, k0, ke), functools.partial(update, i), lambda c: c, carry)

    zeros = jnp.zeros((b, kh, block_k, h), jnp.float32)
    dq, dk, dv = lax.fori_loop(k0 // block_q, t // block_q, body, (dq, zeros, zeros))
    return dq, (dk, dv)


def flash_backward(q, k, v, key_end, out, lse, dout, block_q: int, block_k: int):
    """Gradients of ``flash_forward`` from its saved out and lse, recomputing block scores.
    Layouts as ``flash_forward``; lse [B,K,G,T] → (dq, dk, dv) in the dtypes of q, k, v."""
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]
    res = (q, k, v, key_end, dout.astype(q.dtype), lse, delta)
    step = functools.partial(_backward_key_block, res, block_q=block_q, block_k=block_k)
    dq, (dk, dv) = lax.scan(step, jnp.zeros(q.shape, jnp.float32), jnp.arange(k.shape[2] // block_k))
    b, kh, _, h = k.shape
    dk = jnp.moveaxis(dk, 0, 2).reshape(b, kh, -1, h)  # [nk, B, K, C, H] → [B, K, S, H]
    dv = jnp.moveaxis(dv, 0, 2).reshape(b, kh, -1, h)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, key_end, block_q, block_k):
    return flash_forward(q, k, v, key_end, block_q, block_k)[0]


def _flash_fwd(q, k, v, key_end, block_q, block_k):
    out, lse = flash_forward(q, k, v, key_end, block_q, block_k)
    return out, (q, k, v, key_end, out, lse)


def _flash_bwd(block_q, block_k, res, dout):
    q, k, v, key_end, out, lse = res
    return (*flash_backward(q, k, v, key_end, out, lse, dout, block_q, block_k), None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def interval_attention(core: Core, q, k, v, key_end, block_q: int, block_k: int) -> jax.Array:
    """Runs ``core`` on the interval mask: pads T to the blocks (padded keys hidden, padded
    queries dropped), lays heads out by kv group, and gives queries that see no key the mean of
    v. q [B, T, N, H]; k, v [B, T, K, H]; key_end [B, T] int → [B, T, N, H] in q's dtype."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    if k.shape[1] != t or key_end.shape != (b, t):
        raise ValueError(f"interval attention needs keys of the queries' own tokens: q {q.shape}, k {k.shape}, "
                         f"key_end {key_end.shape}")
    block_q, block_k = min(block_q, _round_up(t, 8)), min(block_k, _round_up(t, 8))
    tp = _round_up(t, math.lcm(block_q, block_k))
    pad = ((0, 0), (0, tp - t), (0, 0), (0, 0))
    qg = jnp.pad(q, pad).reshape(b, tp, kh, n // kh, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, Tp, H]
    kt, vt = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (k, v))  # [B, K, Tp, H]
    ke = jnp.pad(key_end.astype(jnp.int32), ((0, 0), (0, tp - t)))  # padded keys: key_end 0, never seen
    out = core(qg, kt, vt, ke, block_q, block_k)  # [B, K, G, Tp, H]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, tp, n, h)[:, :t]
    mean_v = jnp.repeat(jnp.mean(v.astype(jnp.float32), axis=1), n // kh, axis=1)  # [B, N, H]
    return jnp.where(sees_nothing(key_end)[:, :, None, None], mean_v[:, None].astype(q.dtype), out)


def sees_nothing(key_end: jax.Array) -> jax.Array:
    """[B, T] bool: query q sees no key, i.e. max over k <= q of key_end[k] is <= q."""
    t = key_end.shape[1]
    return lax.cummax(key_end.astype(jnp.int32), axis=1) <= jnp.arange(t, dtype=jnp.int32)


def blockwise_attention(q, k, v, key_end, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK):
    """Flash-style attention under the interval mask (see the module docstring).

    q [B, T, N, H]; k, v [B, T, K, H]; key_end [B, T] int → [B, T, N, H] in q's dtype; equal to
    ``reference_attention(q, k, v, interval_mask(key_end))`` up to float rounding, in values and
    gradients, without a [T, S] buffer."""
    return interval_attention(_flash, q, k, v, key_end, block_q, block_k)
