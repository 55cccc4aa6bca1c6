"""The sampler's device state: a fixed-capacity batch of slots (a pytree, donated in place).

Shapes: S slots, C cache capacity (tokens per slot), L layers, K kv heads, H head dim;
paged layout: P pages of Z tokens, M = C / Z page-table columns per slot.

A slot's context is ``cache`` rows [0, lengths) plus one *pending* token: the last token
of the context (the end of the prompt, of an observation, or the last sampled token),
whose key/value is not yet in the cache. Every decode step feeds the pending token at
position ``lengths``, samples the next token and makes it the new pending token. So the
RoPE position of the pending token is ``cache.lengths`` and the context length is
``lengths + 1``; a prefix is never recomputed: insert prefills prompt[:-1], append prefills
[pending] + span[:-1], fork copies rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arpo_jax.models.config import ModelConfig
from arpo_jax.models.sharding import BATCH, fit_spec
from arpo_jax.models.paged_cache import PagedKVCache, init_paged_pools
from arpo_jax.models.transformer import KVCache, init_cache
from arpo_jax.sampling.config import FREE


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplerState:
    """Per-slot decoding state.

    cache: KV cache, contiguous (k/v L×[S, C, K, H]) or paged (k/v pools L×[K, P, Z, H],
        page_table [S, M]: the host's table as uploaded with the last call); ``cache.lengths``
        [S] = tokens in the cache.
    pending: [S] int32, the next input token (see module docstring).
    status: [S] int32, RUNNING (0) or the reason the slot stopped (config.py codes).
    stop_index: [S] int32, which stop string stopped the slot (-1 if none).
    stop_state: [S] int32, stop-string automaton state (reset at insert/append).
    budget: [S] int32, tokens the slot may still add (generated + appended).
    num_generated: [S] int32, tokens generated since the last insert/append.
    rng: [S, 2] uint32, raw PRNG key of each slot (advanced once per generated token).
    """

    cache: KVCache
    pending: jax.Array
    status: jax.Array
    stop_index: jax.Array
    stop_state: jax.Array
    budget: jax.Array
    num_generated: jax.Array
    rng: jax.Array

    @property
    def num_slots(self) -> int:
        return self.pending.shape[0]

    @property
    def capacity(self) -> int:
        return self.cache.capacity


def init_state(cfg: ModelConfig, num_slots: int, capacity: int, *, seed: int = 0, dtype=None,
               paged: tuple[int, int, str] | None = None) -> SamplerState:
    """All slots FREE and empty; slot keys derived from ``seed``. ``paged`` = (num_pages,
    page_size, attention impl) selects the paged layout (capacity a multiple of page_size)."""
    s = num_slots
    if paged is None:
        cache = init_cache(cfg, s, capacity, dtype)
    else:
        num_pages, page_size, impl = paged
        k, v = init_paged_pools(cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim,
                                dtype or cfg.jnp_dtype)
        cache = PagedKVCache(k=k, v=v, page_table=jnp.zeros((s, capacity // page_size), jnp.int32),
                             lengths=jnp.zeros((s,), jnp.int32), impl=impl)
    zeros = lambda: jnp.zeros((s,), jnp.int32)  # noqa: E731  (distinct buffers: the state is donated)
    keys = jax.random.key_data(jax.random.split(jax.random.key(seed), s))
    return SamplerState(cache=cache, pending=zeros(),
                        status=jnp.full((s,), FREE, jnp.int32), stop_index=jnp.full((s,), -1, jnp.int32),
                        stop_state=zeros(), budget=zeros(), num_generated=zeros(), rng=keys)


def state_shardings(state: SamplerState, mesh: Mesh) -> SamplerState:
    """Slots split over the mesh's batch axes (data, fsdp); kv heads over ``tensor``."""
    def one(rule):
        return lambda x: NamedSharding(mesh, _canonical(fit_spec(rule(x), x.shape, mesh), mesh))

    per_slot = one(lambda x: (BATCH, None, "tensor", None) if x.ndim == 4 else (BATCH,))
    out = jax.tree_util.tree_map(per_slot, state)  # cache [S, C, K, H] / per slot [S] or [S, M]
    if isinstance(state.cache, PagedKVCache):  # pools [K, P, Z, H] are shared by all slots: heads split only
        pool = one(lambda x: ("tensor", None, None, None))
        out.cache = dataclasses.replace(out.cache, k=tuple(map(pool, state.cache.k)),
                                        v=tuple(map(pool, state.cache.v)))
    return out


def _canonical(spec: P, mesh: Mesh) -> P:
    """Drops size-1 mesh axes and trailing Nones: the form jit gives its outputs, so that the
    state's sharding is identical (not just equivalent) across calls and nothing recompiles."""
    out = []
    for axis in spec:
        names = tuple(a for a in (axis if isinstance(axis, tuple) else (axis,)) if a and mesh.shape[a] > 1)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def constrain_state(state: SamplerState, shardings: SamplerState | None) -> SamplerState:
    """Pins ``state`` to its shardings (so outputs match inputs and nothing recompiles)."""
    if shardings is None:
        return state
    return jax.tree_util.tree_map(jax.lax.with_sharding_constraint, state, shardings)
