"""Pure, jittable sampler operations on a ``SamplerState``.

Shapes: S slots, C cache capacity, n selected slots (padded to a bucket), T span length
(padded to a bucket), V vocab, W chunk length. Padded entries of ``slots`` hold S (out of
range): they are read clamped, computed, and their writes are dropped.

``graphdef`` (the model's NNX graph), the ``SamplingConfig`` and the state shardings are
static (bound with functools.partial before ``jax.jit``); params and state are traced.

Attention windows. A call only needs the cache positions its slots can reach, so the
model runs on the first ``window`` positions of the cache (a static size chosen by the
host from the slots' lengths, a power-of-two bucket): attention and cache traffic scale with
the longest live sequence, not with the capacity. The window is copied out before the
computation and written back after it (once per call, not per token).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from arpo_jax.models.paged_cache import PagedKVCache
from arpo_jax.models.transformer import KVCache
from arpo_jax.sampling.config import BUDGET, CAPACITY, EOS, FREE, RUNNING, STOP_STRING, SamplingConfig
from arpo_jax.sampling.processing import sample_tokens
from arpo_jax.sampling.state import SamplerState, constrain_state
from arpo_jax.sampling.stops import StopTables, stop_step


# ------------------------------------------------------------------------ row helpers
def _take(x: jax.Array, rows: jax.Array) -> jax.Array:
    return x.at[rows].get(mode="clip")


def _put(x: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
    return x.at[rows].set(values.astype(x.dtype), mode="drop")


def _take_cache(cache: KVCache, rows: jax.Array | None, window: int) -> KVCache:
    """Rows ``rows`` (all if None) and positions [0, window) of the cache."""
    def one(x):
        return (x if rows is None else _take(x, rows))[:, :window]

    lengths = cache.lengths if rows is None else _take(cache.lengths, rows)
    return KVCache(k=tuple(map(one, cache.k)), v=tuple(map(one, cache.v)), lengths=lengths)


def _put_cache(cache: KVCache, rows: jax.Array | None, sub: KVCache) -> KVCache:
    """Writes ``sub`` (from ``_take_cache``) back into rows ``rows`` (all if None)."""
    w = sub.capacity

    def one(x, y):
        if rows is None:
            return jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), 0, axis=1)
        return x.at[rows, :w].set(y.astype(x.dtype), mode="drop")

    lengths = sub.lengths if rows is None else _put(cache.lengths, rows, sub.lengths)
    return KVCache(k=tuple(map(one, cache.k, sub.k)), v=tuple(map(one, cache.v, sub.v)), lengths=lengths)


def _view(cache: KVCache | PagedKVCache, rows: jax.Array | None, window: int, table: jax.Array | None):
    """What the model runs on for rows ``rows`` (all if None) and positions [0, window):
    contiguous, a copy of those rows' first ``window`` entries; paged, the pools themselves
    and the rows' first ceil(window / page size) page-table columns (``table`` [S, M])."""
    if isinstance(cache, KVCache):
        return _take_cache(cache, rows, window)
    wp = -(-window // cache.page_size)
    lengths = cache.lengths if rows is None else _take(cache.lengths, rows)
    sub_table = (table if rows is None else _take(table, rows))[:, :wp]
    return dataclasses.replace(cache, page_table=sub_table, lengths=lengths)


def _store(cache: KVCache | PagedKVCache, rows: jax.Array | None, sub, table: jax.Array | None):
    """Puts a ``_view`` back after the model wrote into it (the paged state keeps ``table``)."""
    if isinstance(cache, KVCache):
        return _put_cache(cache, rows, sub)
    lengths = sub.lengths if rows is None else _put(cache.lengths, rows, sub.lengths)
    return dataclasses.replace(cache, k=sub.k, v=sub.v, page_table=table, lengths=lengths)


def copy_pages(cache: PagedKVCache, src: jax.Array, dst: jax.Array) -> PagedKVCache:
    """Copies pool pages ``src`` [n] onto ``dst`` [n] in every layer (copy-on-write; entries
    with dst >= P are padding and dropped)."""
    def one(pool):  # [K, P, Z, H]
        return pool.at[:, dst].set(pool.at[:, src].get(mode="clip"), mode="drop")

    return dataclasses.replace(cache, k=tuple(map(one, cache.k)), v=tuple(map(one, cache.v)))


def copy_pages_op(state: SamplerState, src, dst, *, shardings=None) -> SamplerState:
    """``copy_pages`` on the state's cache (the host's copy-on-write before a write)."""
    return constrain_state(dataclasses.replace(state, cache=copy_pages(state.cache, src, dst)), shardings)


def _split_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Raw keys [B, 2] → (next keys, subkeys for this step), both raw [B, 2]."""
    pairs = jax.vmap(jax.random.split)(jax.random.wrap_key_data(rng))  # [B, 2] typed
    return jax.random.key_data(pairs[:, 0]), jax.random.key_data(pairs[:, 1])


# --------------------------------------------------------------------------- decoding
def decode_chunk(params, state: SamplerState, tables: StopTables | None, allowed, page_table=None, *, window: int,
                 graphdef, cfg: SamplingConfig, shardings=None):
    """Decodes up to ``cfg.chunk_size`` tokens for every RUNNING slot with ``allowed`` [S] bool, on device.

    A ``lax.while_loop`` feeds each slot's pending token, samples the next one (with its
    log-prob and entropy), applies the stop rules and exits as soon as no allowed slot is
    RUNNING. Stopped/free/not-allowed slots ride along in the batch (fixed shapes) but keep their state: their
    cache length does not advance and their key is not consumed. ``window`` (static) must
    cover every RUNNING slot's length + chunk_size; other slots may lie beyond it. With a paged
    cache, ``page_table`` [S, M] is the host's table (pages for those positions allocated).

    Returns (new state, out): tokens [S, W] int32 (-1 where not generated), logprobs and
    entropies [S, W] fp32 (+ topk_entropies with cfg.topk_entropy), num_new [S] (a prefix of
    the W columns per slot), steps (loop iterations run).
    """
    model = nnx.merge(graphdef, params)
    s, w, cap = state.num_slots, cfg.chunk_size, state.capacity
    eos_ids = jnp.asarray(cfg.eos_ids, jnp.int32) if cfg.eos_ids else None
    out_tok = jnp.full((s, w), -1, jnp.int32)
    out_lp, out_ent = jnp.zeros((s, w), jnp.float32), jnp.zeros((s, w), jnp.float32)
    out_extra = jnp.zeros((s, w if cfg.topk_entropy else 0), jnp.float32)  # top-k entropies

    def cond(carry):
        step, st = carry[0], carry[1]
        return (step < w) & jnp.any((st.status == RUNNING) & allowed)

    def body(carry):
        step, st, toks, lps, ents, extra = carry
        active = (st.status == RUNNING) & allowed  # [S]
        logits, cache = model(st.pending[:, None], cache=st.cache, num_new=active.astype(jnp.int32))
        # the model clips lengths to the window: keep the true length of slots that sat out
        cache = dataclasses.replace(cache, lengths=jnp.where(active, cache.lengths, st.cache.lengths))
        rng, tok, lp, ent, topk_ent = _sample_step(logits[:, 0], st.rng, cfg)  # [S] each

        reason, budget, stop_state, stop_index = _stop_reasons(tok, active, cache.lengths, st, tables, eos_ids, cap)
        keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731
        st = SamplerState(cache=cache, pending=keep(tok, st.pending), status=keep(reason, st.status),
                          stop_index=stop_index, stop_state=keep(stop_state, st.stop_state),
                          budget=keep(budget, st.budget), num_generated=st.num_generated + active,
                          rng=jnp.where(active[:, None], rng, st.rng))
        toks = toks.at[:, step].set(jnp.where(active, tok, -1))
        lps = lps.at[:, step].set(jnp.where(active, lp, 0.0))
        ents = ents.at[:, step].set(jnp.where(active, ent, 0.0))
        if cfg.topk_entropy:
            extra = extra.at[:, step].set(jnp.where(active, topk_ent, 0.0))
        return step + 1, st, toks, lps, ents, extra

    before, full_cache = state.num_generated, state.cache
    state = dataclasses.replace(state, cache=_view(full_cache, None, window, page_table))
    steps, state, out_tok, out_lp, out_ent, out_extra = jax.lax.while_loop(
        cond, body, (jnp.int32(0), state, out_tok, out_lp, out_ent, out_extra))
    state = dataclasses.replace(state, cache=_store(full_cache, None, state.cache, page_table))
    state = constrain_state(state, shardings)
    out = dict(tokens=out_tok, logprobs=out_lp, entropies=out_ent, num_new=state.num_generated - before,
               steps=steps, status=state.status, stop_index=state.stop_index, lengths=state.cache.lengths,
               budget=state.budget)
    if cfg.topk_entropy:
        out["topk_entropies"] = out_extra
    return state, out


def _sample_step(logits, rng, cfg: SamplingConfig):
    """One token per slot from logits [S, V]: (next keys, token, log-prob, entropy, top-k entropy or None)."""
    rng, sub = (rng, rng) if cfg.greedy else _split_keys(rng)
    if cfg.topk_entropy:
        return (rng, *sample_tokens(logits, sub, cfg, with_topk=True))
    return (rng, *sample_tokens(logits, sub, cfg), None)


def _stop_reasons(tok, active, lengths, st: SamplerState, tables: StopTables | None, eos_ids, cap: int):
    """Why each slot stops after sampling ``tok`` [S] (RUNNING if it goes on), by priority
    EOS > stop string > budget > capacity; returns (reason, budget, stop_state, stop_index)."""
    reason = jnp.full(tok.shape, RUNNING, jnp.int32)
    reason = jnp.where(lengths >= cap, CAPACITY, reason)  # no room to feed the new token
    budget = st.budget - 1
    reason = jnp.where(budget <= 0, BUDGET, reason)
    stop_state, stop_index = st.stop_state, st.stop_index
    if tables is not None:
        stop_state, hit = stop_step(st.stop_state, tok, tables)
        reason = jnp.where(hit > 0, STOP_STRING, reason)
    if eos_ids is not None:
        reason = jnp.where(jnp.any(tok[:, None] == eos_ids[None, :], axis=-1), EOS, reason)
    if tables is not None:
        stop_index = jnp.where(active & (reason == STOP_STRING), hit - 1, stop_index)
    return reason, budget, stop_state, stop_index


# --------------------------------------------------------------------------- prefill
def _prefill(model, inputs, cache: KVCache, num_new, piece: int) -> KVCache:
    """Writes ``inputs`` [n, T] (``num_new`` [n] real) into ``cache`` rows, in pieces of at most
    ``piece`` tokens (T is a multiple of it when larger) to bound attention memory."""
    n, t = inputs.shape
    if t <= piece:
        return model(inputs, cache=cache, num_new=num_new, return_hidden=True)[1]

    def body(c, xs):
        i, x = xs
        return model(x, cache=c, num_new=jnp.clip(num_new - i * piece, 0, piece), return_hidden=True)[1], None

    pieces = inputs.reshape(n, t // piece, piece).transpose(1, 0, 2)  # [T/P, n, P]
    return jax.lax.scan(body, cache, (jnp.arange(t // piece), pieces))[0]


# ------------------------------------------------------------------- prefill (insert)
def insert(params, state: SamplerState, slots, tokens, num_new, last, budgets, keys, page_table=None, *, graphdef,
           prefill_chunk, shardings=None):
    """Starts new sequences in ``slots`` [n]: prefills ``tokens`` [n, T] (prompt[:-1],
    right-padded; ``num_new`` [n] = len(prompt) - 1 real tokens) from position 0, makes
    ``last`` [n] (prompt[-1]) pending, and resets status (RUNNING), stop matching, counters,
    ``budgets`` [n] and PRNG ``keys`` [n, 2]. Whatever the slots held is discarded."""
    model = nnx.merge(graphdef, params)
    sub = _view(state.cache, slots, min(tokens.shape[1], state.capacity), page_table)  # positions [0, T)
    sub = dataclasses.replace(sub, lengths=jnp.zeros_like(sub.lengths))
    sub = _prefill(model, tokens, sub, num_new, prefill_chunk)
    n = slots.shape[0]
    status = jnp.where(budgets <= 0, BUDGET, RUNNING)
    state = SamplerState(
        cache=_store(state.cache, slots, sub, page_table), pending=_put(state.pending, slots, last),
        status=_put(state.status, slots, status), stop_index=_put(state.stop_index, slots, jnp.full((n,), -1)),
        stop_state=_put(state.stop_state, slots, jnp.zeros((n,))), budget=_put(state.budget, slots, budgets),
        num_generated=_put(state.num_generated, slots, jnp.zeros((n,))), rng=_put(state.rng, slots, keys))
    return constrain_state(state, shardings)


# ------------------------------------------------------------------- prefill (append)
def append(params, state: SamplerState, slots, span, num_new, last, resume, page_table=None, *, window: int,
           graphdef, prefill_chunk, shardings=None):
    """Appends a span (an observation) to ``slots`` [n] without recomputing their prefix.

    span: [n, T] right-padded tokens, ``num_new`` [n] >= 1 real ones, ``last`` [n] = the last
    real token. The model is run on [pending, span[:-1]] at the slots' current positions (only
    these tokens are computed); span[-1] becomes pending. The budget is charged ``num_new``
    tokens; stop matching and ``num_generated`` restart. ``resume`` [n] bool: set RUNNING
    (BUDGET if the budget is spent) or keep the current status. ``window`` (static) >= every
    slot's length + len(span).
    """
    model = nnx.merge(graphdef, params)
    sub = _view(state.cache, slots, window, page_table)
    pending = _take(state.pending, slots)
    inputs = jnp.concatenate([pending[:, None], span], axis=1)[:, : span.shape[1]]  # [n, T]
    sub = _prefill(model, inputs, sub, num_new, prefill_chunk)
    n = slots.shape[0]
    budget = _take(state.budget, slots) - num_new
    status = jnp.where(resume, jnp.where(budget <= 0, BUDGET, RUNNING), _take(state.status, slots))
    status = jnp.where(resume & (sub.lengths >= state.capacity), CAPACITY, status)  # host prevents it
    state = SamplerState(
        cache=_store(state.cache, slots, sub, page_table), pending=_put(state.pending, slots, last),
        status=_put(state.status, slots, status), stop_index=_put(state.stop_index, slots, jnp.full((n,), -1)),
        stop_state=_put(state.stop_state, slots, jnp.zeros((n,))), budget=_put(state.budget, slots, budget),
        num_generated=_put(state.num_generated, slots, jnp.zeros((n,))), rng=state.rng)
    return constrain_state(state, shardings)


# ------------------------------------------------------------------------ fork/release
def fork(state: SamplerState, parents, children, keys, explicit, copies=None, *, shardings=None):
    """Copies slot ``parents[i]`` into slot ``children[i]`` (cache rows, pending token,
    length, status, stop matcher, budget, counters): the child continues exactly where the
    parent stands, with nothing recomputed. The child's key is ``keys[i]`` where
    ``explicit[i]``, else ``fold_in(parent key, child slot)`` (a split of the parent's stream;
    the parent's own stream is unchanged). parents, children: [n] int32; keys: [n, 2].
    Paged cache: the host already shares the parent's pages with the child; ``copies`` =
    (src, dst) [m] pages to copy (the parents' partial last pages)."""
    if copies is None:
        cache = _put_cache(state.cache, children, _take_cache(state.cache, parents, state.capacity))
    else:
        cache = copy_pages(state.cache, *copies)
        cache = dataclasses.replace(cache, lengths=_put(cache.lengths, children, _take(cache.lengths, parents)))
    parent_keys = jax.random.wrap_key_data(_take(state.rng, parents))
    derived = jax.random.key_data(jax.vmap(jax.random.fold_in)(parent_keys, children))
    child_keys = jnp.where(explicit[:, None], keys.astype(derived.dtype), derived)
    copy = lambda x: _put(x, children, _take(x, parents))  # noqa: E731
    state = SamplerState(
        cache=cache, pending=copy(state.pending), status=copy(state.status),
        stop_index=copy(state.stop_index), stop_state=copy(state.stop_state), budget=copy(state.budget),
        num_generated=copy(state.num_generated), rng=_put(state.rng, children, child_keys))
    return constrain_state(state, shardings)


def rewind(state: SamplerState, slots, lengths, pending, budgets, *, shardings=None):
    """Moves ``slots`` [n] back to an earlier point of their own history: the cache keeps rows
    [0, lengths) (later entries become invisible and are overwritten), ``pending`` [n] is the
    token at that point and ``budgets`` [n] the budget left there. The slots resume RUNNING
    (BUDGET when no budget is left) with fresh stop matching; keys are kept. ARPO's paper rule
    forks a branch this way from the post-observation state after looking k tokens ahead."""
    n = slots.shape[0]
    cache = state.cache
    cache = dataclasses.replace(cache, lengths=_put(cache.lengths, slots, lengths))
    status = jnp.where(budgets <= 0, BUDGET, RUNNING)
    state = SamplerState(cache=cache, pending=_put(state.pending, slots, pending),
                         status=_put(state.status, slots, status),
                         stop_index=_put(state.stop_index, slots, jnp.full((n,), -1)),
                         stop_state=_put(state.stop_state, slots, jnp.zeros((n,))),
                         budget=_put(state.budget, slots, budgets),
                         num_generated=_put(state.num_generated, slots, jnp.zeros((n,))), rng=state.rng)
    return constrain_state(state, shardings)


def release(state: SamplerState, slots, *, shardings=None):
    """Marks ``slots`` [n] FREE (length 0). Their cache rows are simply overwritten later."""
    n = slots.shape[0]
    zeros = jnp.zeros((n,), jnp.int32)
    cache = state.cache
    cache = dataclasses.replace(cache, lengths=_put(cache.lengths, slots, zeros))
    state = SamplerState(cache=cache, pending=state.pending, status=_put(state.status, slots, jnp.full((n,), FREE)),
                         stop_index=_put(state.stop_index, slots, zeros - 1), stop_state=state.stop_state,
                         budget=_put(state.budget, slots, zeros), num_generated=_put(state.num_generated, slots, zeros),
                         rng=state.rng)
    return constrain_state(state, shardings)


def next_logits(params, state: SamplerState, slots, page_table=None, *, graphdef):
    """Raw fp32 logits [n, V] the next decode step of ``slots`` [n] would sample from (the
    state is not modified). For tests, debugging and scoring."""
    model = nnx.merge(graphdef, params)
    sub = _view(state.cache, slots, state.capacity, page_table)
    real = (slots < state.num_slots).astype(jnp.int32)  # padding rows write nothing (a paged row's pages are shared)
    logits, _ = model(_take(state.pending, slots)[:, None], cache=sub, num_new=real)
    return logits[:, 0]
