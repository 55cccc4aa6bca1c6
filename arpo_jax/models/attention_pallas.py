"""A Pallas TPU kernel for attention under the interval mask (forward), with the blockwise JAX
backward on the kernel's saved log-sum-exp.

Shapes: B batch, T queries = S keys (padded to the blocks), N query heads, K kv heads,
G = N // K, H head dim, Q / C a query / key block. The kernel sees q as [B, N, T, H] and k, v
as [B, K, S, H]; head n reads kv head n // G.

Why not ``jax.experimental.pallas.ops.tpu.splash_attention``: its masks are static
(``NumpyMask``/``MultiHeadMask``, processed on the host per compile) or a dense dynamic
[heads, T, S] array shared by the whole batch (a materialised T×S mask again), and its
``SegmentIds`` only express block-diagonal packing, not a rollout tree whose prefix every
branch sees. Our ``key_end`` is data, one row per batch row, so this kernel takes it as an
input: grid (B, N, T/Q, S/C), the key axis last and sequential, running max / denominator /
accumulator in VMEM scratch. Key blocks past a query block's last query are never fetched (the
index map clamps them to the last needed block, so the pipeline skips the copy) and a block
with no visible (query, key) pair is skipped (``pl.when``).

On CPU the kernel runs in TPU interpret mode (``interpret=True``): slow, for tests. On TPU the
blocks must respect Mosaic tiling (block sizes multiples of 128; H a multiple of 128 is best).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from arpo_jax.models.attention import NEG_INF
from arpo_jax.models.attention_blockwise import DEFAULT_BLOCK, flash_backward, interval_attention


def _forward_kernel(q_ref, k_ref, v_ref, ke_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *,
                    block_q: int, block_k: int, scale: float):
    """One (row, head, query block, key block) step. q_ref [Q, H]; k_ref, v_ref [C, H];
    ke_ref [1, C]; o_ref [Q, H]; lse_ref [Q, 1]; scratch m, l [Q, 1], acc [Q, H] (fp32)."""
    i, j = pl.program_id(2), pl.program_id(3)
    q0, k0 = i * block_q, j * block_k

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG_INF, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    ke = ke_ref[...]  # [1, C]
    kpos = k0 + lax.broadcasted_iota(jnp.int32, (1, block_k), 1)  # [1, C]
    qpos = q0 + lax.broadcasted_iota(jnp.int32, (block_q, 1), 0)  # [Q, 1]
    any_visible = jnp.max((ke > jnp.maximum(kpos, q0)).astype(jnp.float32)) > 0
    live = (k0 <= q0 + block_q - 1) & any_visible  # clamped (re-fetched) blocks fail the first test

    @pl.when(live)
    def _step():
        s = lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32) * scale  # [Q, C]
        mask = (kpos <= qpos) & (qpos < ke)
        s = jnp.where(mask, s, NEG_INF)
        m_prev = m_sc[...]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [Q, 1]
        p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
        corr = jnp.exp(m_prev - m_new)
        l_sc[...] = l_sc[...] * corr + jnp.sum(p, axis=1, keepdims=True)
        pv = lax.dot_general(p.astype(v_ref.dtype), v_ref[...], (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)  # [Q, H]
        acc_sc[...] = acc_sc[...] * corr + pv
        m_sc[...] = m_new

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        l_safe = jnp.maximum(l_sc[...], 1e-30)  # 0 only for queries that see no key
        o_ref[...] = (acc_sc[...] / l_safe).astype(o_ref.dtype)
        lse_ref[...] = m_sc[...] + jnp.log(l_safe)


def pallas_forward(q, k, v, key_end, block_q: int, block_k: int, interpret: bool = False):
    """The kernel on ``flash_forward``'s layout: q [B,K,G,T,H], k/v [B,K,S,H], key_end [B,S]
    → (out [B,K,G,T,H] in q's dtype, lse [B,K,G,T] fp32)."""
    b, kh, g, t, h = q.shape
    n, nq, nk = kh * g, t // block_q, k.shape[2] // block_k

    def kv_block(bi, ni, i, j):  # key blocks past the last query of block i: repeat the last needed one
        return bi, ni // g, jnp.minimum(j, (i * block_q + block_q - 1) // block_k), 0

    def ke_block(bi, ni, i, j):
        return bi, 0, kv_block(bi, ni, i, j)[2]

    kernel = functools.partial(_forward_kernel, block_q=block_q, block_k=block_k, scale=1.0 / math.sqrt(h))
    out, lse = pl.pallas_call(
        kernel,
        grid=(b, n, nq, nk),
        in_specs=[pl.BlockSpec((None, None, block_q, h), lambda bi, ni, i, j: (bi, ni, i, 0)),
                  pl.BlockSpec((None, None, block_k, h), kv_block),
                  pl.BlockSpec((None, None, block_k, h), kv_block),
                  pl.BlockSpec((None, 1, block_k), ke_block)],
        out_specs=[pl.BlockSpec((None, None, block_q, h), lambda bi, ni, i, j: (bi, ni, i, 0)),
                   pl.BlockSpec((None, None, block_q, 1), lambda bi, ni, i, j: (bi, ni, i, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, n, t, h), q.dtype), jax.ShapeDtypeStruct((b, n, t, 1), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, 1), jnp.float32),
                        pltpu.VMEM((block_q, h), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False,
    )(q.reshape(b, n, t, h), k, v, key_end.astype(jnp.int32)[:, None, :])
    return out.reshape(b, kh, g, t, h), lse.reshape(b, kh, g, t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _pallas_flash(q, k, v, key_end, block_q, block_k, interpret):
    return pallas_forward(q, k, v, key_end, block_q, block_k, interpret)[0]


def _pallas_flash_fwd(q, k, v, key_end, block_q, block_k, interpret):
    out, lse = pallas_forward(q, k, v, key_end, block_q, block_k, interpret)
    return out, (q, k, v, key_end, out, lse)


def _pallas_flash_bwd(block_q, block_k, interpret, res, dout):
    q, k, v, key_end, out, lse = res
    return (*flash_backward(q, k, v, key_end, out, lse, dout, block_q, block_k), None)


_pallas_flash.defvjp(_pallas_flash_fwd, _pallas_flash_bwd)


def pallas_attention(q, k, v, key_end, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK,
                     interpret: bool = False):
    """Interval-mask attention with the Pallas forward kernel and the blockwise backward.

    q [B, T, N, H]; k, v [B, T, K, H]; key_end [B, T] int → [B, T, N, H] in q's dtype (same
    contract as ``blockwise_attention``). ``interpret=True`` runs the kernel in TPU interpret
    mode (any backend; slow)."""
    def core(q, k, v, key_end, block_q, block_k):
        return _pallas_flash(q, k, v, key_end, block_q, block_k, interpret)

    return interval_attention(core, q, k, v, key_end, block_q, block_k)
