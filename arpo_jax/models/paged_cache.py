"""Paged KV cache: a pool of fixed-size pages per layer and a page table per row.

Shapes: B rows, T new tokens, K kv heads, H head dim, N query heads, P pages in the pool,
Z page size (tokens per page), Wp pages in a row's window (page_table columns), W = Wp * Z.

Position p of row b lives in row ``p % Z`` of page ``page_table[b, p // Z]``. The pools are
laid out [K, P, Z, H], the layout of the paged-attention kernels JAX ships for TPU and GPU
(``jax.experimental.pallas.ops.{tpu,gpu}.paged_attention``), so the kernel path reads them
without a copy. The page table's width Wp is static: it is the row's attention window (the
caller passes only the columns a call can reach), so attention cost scales with the window.
Which pages a row owns, and that a page is written only by a row that owns it alone, is the
caller's business (``arpo_jax.sampling.pages``); here writes go where the table says, and
only for real tokens (``t < num_new[b]``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from arpo_jax.models.attention import reference_attention

PAGED_ATTENTION_IMPLS = ("reference", "pallas")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PagedKVCache:
    """k, v: tuples (one per layer) of pools [K, P, Z, H]; page_table: [B, Wp] int32;
    lengths: [B] int32 (tokens in each row); impl (static): decode attention
    implementation, "reference" (gather + einsum, everywhere) or "pallas" (the Pallas kernel
    of the TPU or GPU backend, for one-token calls)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    page_table: jax.Array
    lengths: jax.Array
    impl: str = dataclasses.field(default="reference", metadata=dict(static=True))

    @property
    def page_size(self) -> int:
        return self.k[0].shape[2]

    @property
    def capacity(self) -> int:
        """Positions the page table reaches (the window of this call)."""
        return self.page_table.shape[1] * self.page_size

    @property
    def batch_size(self) -> int:
        return self.page_table.shape[0]

    def layer(self, i: int, positions: jax.Array, num_new: jax.Array) -> "PagedLayer":
        """Layer ``i``'s view for a call writing at ``positions`` [B, T] (``num_new`` [B] real)."""
        valid = jnp.arange(positions.shape[1])[None, :] < num_new[:, None]  # [B, T]
        return PagedLayer(k=self.k[i], v=self.v[i], page_table=self.page_table, positions=positions, valid=valid,
                          impl=self.impl)


def init_paged_pools(num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype
                     ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Zeroed k and v pools, L × [K, P, Z, H] each (distinct buffers: they are donated)."""
    shape = (num_kv_heads, num_pages, page_size, head_dim)
    return tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)), tuple(
        jnp.zeros(shape, dtype) for _ in range(num_layers))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PagedLayer:
    """One layer's pools plus where this call writes: what ``Attention`` receives as its cache."""

    k: jax.Array  # [K, P, Z, H]
    v: jax.Array
    page_table: jax.Array  # [B, Wp]
    positions: jax.Array  # [B, T]
    valid: jax.Array  # [B, T] bool: real tokens (only these are written)
    impl: str = dataclasses.field(default="reference", metadata=dict(static=True))

    def update_and_attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, tuple]:
        """Writes k, v [B, T, K, H] at ``positions``, then attends q [B, T, N, H] to each row's
        keys at positions <= the query's. Returns (out [B, T, N, H], (k pool, v pool))."""
        k_pool = write_pages(self.k, self.page_table, self.positions, self.valid, k)
        v_pool = write_pages(self.v, self.page_table, self.positions, self.valid, v)
        if self.impl == "pallas" and q.shape[1] == 1:
            out = pallas_decode_attention(q, k_pool, v_pool, self.page_table, self.positions[:, 0] + 1)
        else:
            out = paged_reference_attention(q, k_pool, v_pool, self.page_table, self.positions)
        return out, (k_pool, v_pool)


def write_pages(pool: jax.Array, page_table: jax.Array, positions: jax.Array, valid: jax.Array,
                new: jax.Array) -> jax.Array:
    """pool [K, P, Z, H] with new [B, T, K, H] written at ``positions`` [B, T] where ``valid``
    [B, T]; positions past the table's window and invalid tokens are dropped."""
    z, wp = pool.shape[2], page_table.shape[1]
    col = positions // z  # [B, T]
    page = jnp.take_along_axis(page_table, jnp.minimum(col, wp - 1), axis=1)  # [B, T]
    page = jnp.where(valid & (col < wp), page, pool.shape[1])  # out of range: dropped
    values = new.astype(pool.dtype).transpose(2, 0, 1, 3)  # [K, B, T, H]
    return pool.at[:, page, positions % z].set(values, mode="drop")


def gather_pages(pool: jax.Array, page_table: jax.Array) -> jax.Array:
    """pool [K, P, Z, H], page_table [B, Wp] → each row's window [B, W, K, H] (W = Wp * Z)."""
    kk, _, z, h = pool.shape
    b, wp = page_table.shape
    rows = pool[:, page_table]  # [K, B, Wp, Z, H]
    return rows.reshape(kk, b, wp * z, h).transpose(1, 2, 0, 3)


def paged_reference_attention(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array, page_table: jax.Array,
                              positions: jax.Array) -> jax.Array:
    """The definition: gather each row's pages, then ``reference_attention`` with the mask
    key index <= query position. q [B, T, N, H]; positions [B, T] → [B, T, N, H]."""
    k = gather_pages(k_pool, page_table).astype(q.dtype)  # [B, W, K, H]
    v = gather_pages(v_pool, page_table).astype(q.dtype)
    key_index = jnp.arange(k.shape[1], dtype=jnp.int32)
    mask = key_index[None, None, :] <= positions[:, :, None]  # [B, T, W]
    return reference_attention(q, k, v, mask)


def pallas_decode_attention(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array, page_table: jax.Array,
                            lengths: jax.Array, *, backend: str | None = None, interpret: bool = False) -> jax.Array:
    """One query per row (q [B, 1, N, H]) over the first ``lengths`` [B] keys of its pages,
    with the Pallas paged-attention kernel JAX ships for the backend: ``ops.gpu`` on GPU
    (``interpret`` runs it on CPU), else ``ops.tpu`` (on CPU under
    ``pltpu.force_tpu_interpret_mode()``; it computes with K/V cast to bfloat16). → [B, 1, N, H]."""
    wp = page_table.shape[1]
    divisor = lambda n: next(c for c in (8, 4, 2, 1) if n % c == 0)  # noqa: E731  (blocks must divide Wp)
    scaled = (q[:, 0].astype(jnp.float32) / math.sqrt(q.shape[-1])).astype(q.dtype)  # the kernels do not scale
    k_pool, v_pool, lengths = k_pool.astype(q.dtype), v_pool.astype(q.dtype), lengths.astype(jnp.int32)
    if (backend or jax.default_backend()) == "gpu":
        from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention as gpu_paged_attention

        splits = divisor(wp)
        out = gpu_paged_attention(scaled, k_pool, v_pool, page_table, lengths, k_splits=splits,
                                  pages_per_compute_block=divisor(wp // splits), interpret=interpret)
    else:
        from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

        out = paged_attention(scaled, k_pool, v_pool, lengths, page_table, pages_per_compute_block=divisor(wp))
    return out[:, None].astype(q.dtype)
