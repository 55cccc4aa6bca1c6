"""Host-side ``Sampler``: owns the compiled operations and the device ``SamplerState``.

The rollout drives it between chunks::

    sampler.insert(slots, prompts)            # new sequences (prefill prompt[:-1])
    while ...:
        r = sampler.decode_chunk()            # ≤ chunk_size tokens per RUNNING slot, on device
        ... r.tokens[s, :r.num_new[s]], r.status[s], r.stop_index[s] ...
        sampler.append(slots, observations)   # continue after tool results (no re-prefill)
        sampler.fork(parent, children)        # branch: copy cache rows, nothing recomputed
        sampler.release(slots)                # free finished slots for refills

Every operation is one jitted call with the state donated (updated in place; never keep a
reference to an old ``sampler.state``). Ragged inputs are padded to power-of-two buckets —
slot counts in [1, S], span lengths in [min_prefill_bucket, C], attention windows in
[min_window, C] — so the number of compilations is bounded by the buckets used, and decoding
never recompiles once the buckets in use have been seen (``compile_counts()``). One
device→host transfer per chunk brings back the chunk's tokens, log-probs, entropies and the
per-slot status; the host keeps mirrors of status/lengths/budget, so insert/append/fork/
release need no transfer at all.

Memory. ``cfg.kv_layout`` "contiguous": a cache row of ``capacity`` tokens per slot; "paged":
one pool of pages for all slots (``pages.py``; forks share pages), taken on the host before
each call that writes (``OutOfKVPages`` when short): memory, not slots, bounds what runs.
The page API (``page_size``, ``num_pages``, ``pages_free``, ``pages_needed``, ``pages_to_fork``)
covers both: a contiguous row is one page of ``capacity`` tokens, held from insert to release.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from arpo_jax.sampling import engine
from arpo_jax.sampling.config import BUDGET, FREE, RUNNING, SamplingConfig, bucket, prefill_length, window_size
from arpo_jax.sampling.pages import PageAllocator, pad_copies, pages_for
from arpo_jax.sampling.results import ChunkResult, generate, idle_result
from arpo_jax.sampling.state import init_state, state_shardings
from arpo_jax.sampling.stops import build_stop_tables, token_bytes


class Sampler:
    """A fixed-capacity batch of ``num_slots`` slots of ``capacity`` tokens each.

    model: an arpo_jax ``Transformer`` (its parameters may be sharded on ``mesh``).
    tokenizer / tok_bytes: needed only with stop strings (the byte string of each token id).
    mesh: slots are split over its (data, fsdp) axes; calls run under ``jax.set_mesh``.
    seed: default per-slot PRNG keys (explicit keys can be passed to insert/fork).
    """

    def __init__(self, model, cfg: SamplingConfig, *, num_slots: int, capacity: int, tokenizer=None,
                 tok_bytes: Sequence[bytes] | None = None, mesh: Mesh | None = None, seed: int = 0,
                 cache_dtype=None):
        self.cfg, self.mesh = cfg, mesh
        self.num_slots, self.capacity = num_slots, capacity
        self.graphdef, self.params = nnx.split(model)
        self.alloc, paged = None, None
        if cfg.kv_layout == "paged":
            if capacity % cfg.page_size:
                raise ValueError(f"capacity {capacity} must be a multiple of page_size {cfg.page_size}")
            max_pages = capacity // cfg.page_size
            self.alloc = PageAllocator(cfg.num_pages or num_slots * max_pages, cfg.page_size, num_slots, max_pages)
            paged = (self.alloc.num_pages, cfg.page_size, cfg.paged_attention_impl)
        state = init_state(model.cfg, num_slots, capacity, seed=seed, dtype=cache_dtype, paged=paged)
        self.shardings = state_shardings(state, mesh) if mesh is not None else None
        if mesh is not None:
            state = jax.device_put(state, self.shardings)
        else:  # match what jit outputs will carry (e.g. load_hf's one-device mesh), or it recompiles
            leaf = jax.tree_util.tree_leaves(self.params)[0]
            if isinstance(getattr(leaf, "sharding", None), NamedSharding):
                state = jax.device_put(state, NamedSharding(leaf.sharding.mesh, P()))
        self.state = state
        self.tables = None
        if cfg.stop_strings:
            if tok_bytes is None:
                if tokenizer is None:
                    raise ValueError("stop strings need a tokenizer (or tok_bytes)")
                tok_bytes = token_bytes(tokenizer)
            self.tables = build_stop_tables(cfg.stop_strings, tok_bytes, model.cfg.vocab_size)
            if mesh is not None:
                self.tables = jax.device_put(self.tables, NamedSharding(mesh, P()))
        g, sh = self.graphdef, self.shardings
        self._fns = {
            "decode_chunk": jax.jit(partial(engine.decode_chunk, graphdef=g, cfg=cfg, shardings=sh), donate_argnums=1,
                                    static_argnames="window"),
            "insert": jax.jit(partial(engine.insert, graphdef=g, prefill_chunk=cfg.prefill_chunk, shardings=sh),
                              donate_argnums=1),
            "append": jax.jit(partial(engine.append, graphdef=g, prefill_chunk=cfg.prefill_chunk, shardings=sh),
                              donate_argnums=1, static_argnames="window"),
            "fork": jax.jit(partial(engine.fork, shardings=sh), donate_argnums=0),
            "copy_pages": jax.jit(partial(engine.copy_pages_op, shardings=sh), donate_argnums=0),
            "release": jax.jit(partial(engine.release, shardings=sh), donate_argnums=0),
            "rewind": jax.jit(partial(engine.rewind, shardings=sh), donate_argnums=0),
            "next_logits": jax.jit(partial(engine.next_logits, graphdef=g)),
        }
        self._key_shape = jax.random.key_data(jax.random.key(0)).shape
        self._np_rng = np.random.default_rng(seed)
        # Host mirrors of small per-slot fields (refreshed from every chunk's read-back).
        self.status = np.full(num_slots, FREE, np.int32)
        self.lengths = np.zeros(num_slots, np.int32)
        self.budget = np.zeros(num_slots, np.int32)
        self.stop_index = np.full(num_slots, -1, np.int32)
        self.stats = dict(prefill_tokens=0, prefill_tokens_padded=0, decode_steps=0, chunks=0, forked_rows=0)

    # ------------------------------------------------------------------ helpers
    def _ctx(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _slots(self, slots: Sequence[int]) -> tuple[np.ndarray, int]:
        slots = np.asarray(slots, np.int32).reshape(-1)
        if len(slots) == 0:
            raise ValueError("no slots given")
        if len(set(slots.tolist())) != len(slots) or slots.min() < 0 or slots.max() >= self.num_slots:
            raise ValueError(f"slots must be distinct ids in [0, {self.num_slots}), got {slots.tolist()}")
        nb = bucket(len(slots), 1, self.num_slots)
        return np.concatenate([slots, np.full(nb - len(slots), self.num_slots, np.int32)]), nb

    def _pad_rows(self, rows: Sequence[Sequence[int]], nb: int, t: int) -> np.ndarray:
        out = np.zeros((nb, t), np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def _vec(self, values, nb: int, dtype=np.int32) -> np.ndarray:
        values = np.asarray(values, dtype).reshape(-1)
        return np.concatenate([values, np.zeros(nb - len(values), dtype)])

    def _raw_keys(self, keys, n: int, nb: int) -> np.ndarray:
        """keys: None (fresh from the host seed), ints (seeds), typed keys or raw key data."""
        out = np.zeros((nb,) + self._key_shape, np.uint32)
        if keys is None:
            out[:n] = self._np_rng.integers(0, 2**32, (n,) + self._key_shape, dtype=np.uint32)
            return out
        keys = list(keys) if not isinstance(keys, jax.Array) or keys.ndim else [keys]
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} slots")
        for i, k in enumerate(keys):
            if isinstance(k, (int, np.integer)):
                k = jax.random.key(int(k))
            if isinstance(k, jax.Array) and jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key):
                k = jax.random.key_data(k)
            out[i] = np.asarray(k, np.uint32)
        return out

    def compile_counts(self) -> dict[str, int]:
        """Number of compiled variants of each operation (for recompilation checks)."""
        return {name: fn._cache_size() for name, fn in self._fns.items()}

    def update_params(self, model_or_params) -> None:
        """New weights (same shapes/shardings): a model or its ``nnx.split`` state; ``None``
        drops the sampler's reference to its weights (so that a copy made for sampling can be
        freed between rollouts) until new ones are given."""
        self.params = nnx.split(model_or_params)[1] if isinstance(model_or_params, nnx.Module) else model_or_params

    @property
    def weights(self):
        """The weights operations run with; an error while they are dropped."""
        if self.params is None:
            raise RuntimeError("the sampler's weights were dropped (update_params(None)): give new ones first")
        return self.params

    def free_slots(self) -> list[int]:
        return np.nonzero(self.status == FREE)[0].tolist()

    def room(self, slot: int) -> int:
        """Tokens that can still be appended to ``slot`` before its cache row is full."""
        return int(self.capacity - 1 - self.lengths[slot])

    # ------------------------------------------------------------------ KV pages
    @property
    def page_size(self) -> int:
        """Tokens per KV page (contiguous layout: the capacity, one page per slot row)."""
        return self.alloc.page_size if self.alloc else self.capacity

    @property
    def num_pages(self) -> int:
        """KV pages in all (contiguous layout: one per slot)."""
        return self.alloc.num_pages if self.alloc else self.num_slots

    def pages_free(self) -> int:
        """KV pages free now (contiguous layout: the FREE slots' rows)."""
        return self.alloc.free() if self.alloc else int(np.count_nonzero(self.status == FREE))

    def pages_needed(self, slots: Sequence[int], extra_tokens: int | Sequence[int]) -> int:
        """Pages that writing ``extra_tokens`` more tokens to each of ``slots`` (positions
        [length, length + extra)) would take from the free pool, counting the copy of every
        shared page written into. A decode chunk writes min(chunk_size, budget) tokens per
        slot; an insert of a prompt of n tokens into a free slot writes n - 1. Contiguous
        layout: 1 per FREE slot (the row it would take), 0 otherwise."""
        slots = np.asarray(slots, np.int64).reshape(-1)
        if self.alloc is None:
            return int(np.count_nonzero(self.status[slots] == FREE))
        extra = np.broadcast_to(np.asarray(extra_tokens, np.int64), slots.shape)
        return sum(self.alloc.needed(int(s), int(self.lengths[s]), int(self.lengths[s] + e))
                   for s, e in zip(slots, extra))

    def pages_to_fork(self, parent: int, num_children: int) -> int:
        """Pages ``fork(parent, <num_children FREE slots>)`` takes: paged, a copy of the
        parent's partial last page per child (full pages are shared); contiguous, a row each."""
        if self.alloc is None:
            return num_children
        return num_children * int(self.lengths[parent] % self.page_size != 0)

    def _grow(self, slots, starts, ends, what: str):
        """Paged: makes positions [start, end) of each slot writable (all or nothing), runs
        the copy-on-write copies, and returns the page table to upload; contiguous: None."""
        if self.alloc is None:
            return None
        spans = [(int(s), int(a), int(b)) for s, a, b in zip(slots, starts, ends)]
        self.alloc.check(sum(self.alloc.needed(*span) for span in spans), what)
        copies = [c for span in spans for c in self.alloc.grow(*span)]
        if copies:
            with self._ctx():
                self.state = self._fns["copy_pages"](self.state, *pad_copies(self.num_pages, copies))
        return self.alloc.table.copy()

    # --------------------------------------------------------------- operations
    def insert(self, slots: Sequence[int], prompts: Sequence[Sequence[int]], *, budgets=None, keys=None) -> None:
        """Starts ``prompts`` (token id lists, >= 1 token, <= capacity) in ``slots``.

        budgets: tokens each may add (default ``cfg.max_new_tokens``); keys: PRNG key per slot.
        """
        if len(prompts) != len(np.atleast_1d(slots)):
            raise ValueError("one prompt per slot")
        lens = np.asarray([len(p) for p in prompts])
        if lens.min() < 1 or lens.max() > self.capacity:
            raise ValueError(f"prompt lengths must be in [1, {self.capacity}], got {lens.tolist()}")
        padded, nb = self._slots(slots)
        n = len(prompts)
        t = prefill_length(int(lens.max()) - 1, self.cfg, self.capacity)
        budgets = np.full(n, self.cfg.max_new_tokens) if budgets is None else np.asarray(budgets)
        args = (padded, self._pad_rows([p[:-1] for p in prompts], nb, t), self._vec(lens - 1, nb),
                self._vec([p[-1] for p in prompts], nb), self._vec(budgets, nb), self._raw_keys(keys, n, nb))
        idx = padded[:n]
        table = None
        if self.alloc is not None:  # whatever the slots held is discarded
            need = sum(pages_for(int(x) - 1, self.page_size) for x in lens)
            self.alloc.check(need - sum(self.alloc.reclaimable(int(s)) for s in idx), "insert")
            for s in idx:
                self.alloc.release(int(s))
            table = self._grow(idx, np.zeros(n), lens - 1, "insert")
        with self._ctx():
            self.state = self._fns["insert"](self.weights, self.state, *args, table)
        self.status[idx] = np.where(budgets <= 0, BUDGET, RUNNING)
        self.lengths[idx] = lens - 1
        self.budget[idx] = budgets
        self.stop_index[idx] = -1
        self.stats["prefill_tokens"] += int((lens - 1).sum())
        self.stats["prefill_tokens_padded"] += nb * t

    def decode_chunk(self, allowed: Sequence[bool] | np.ndarray | None = None) -> ChunkResult:
        """Decodes up to ``chunk_size`` tokens for every RUNNING slot; one read-back.

        allowed: optional bool [num_slots]; slots with False sit this chunk out, frozen like
        stopped slots (length, key, status unchanged). Paged layout: takes the pages the
        decoding slots may write (``OutOfKVPages`` when short; nothing changes then)."""
        allowed = np.ones(self.num_slots, bool) if allowed is None else np.asarray(allowed, bool)
        if allowed.shape != (self.num_slots,):
            raise ValueError(f"allowed must be a bool mask of shape ({self.num_slots},), got {allowed.shape}")
        running = (self.status == RUNNING) & allowed
        if not running.any():  # nothing to do: answer from the host mirrors, no device call
            return idle_result(self)
        longest = int(self.lengths[running].max())
        window = window_size(longest + self.cfg.chunk_size, self.cfg, self.capacity)
        idx = np.nonzero(running)[0]
        writes = np.minimum(np.minimum(self.budget[idx], self.cfg.chunk_size), self.capacity - self.lengths[idx])
        table = self._grow(idx, self.lengths[idx], self.lengths[idx] + writes, "decode_chunk")
        with self._ctx():
            self.state, out = self._fns["decode_chunk"](self.weights, self.state, self.tables, allowed, table,
                                                        window=window)
        out = jax.device_get(out)
        res = ChunkResult(**{k: np.asarray(v) for k, v in out.items() if k != "steps"}, steps=int(out["steps"]))
        self.status[:], self.lengths[:], self.budget[:] = res.status, res.lengths, res.budget
        self.stop_index[:] = res.stop_index
        if self.alloc is not None:  # stopped slots give back the pages they did not fill
            for s in idx[res.status[idx] != RUNNING]:
                self.alloc.truncate(int(s), int(res.lengths[s]))
        self.stats["decode_steps"] += res.steps
        self.stats["chunks"] += 1
        return res

    def append(self, slots: Sequence[int], spans: Sequence[Sequence[int]], *, resume: bool | Sequence[bool] = True
               ) -> None:
        """Appends ``spans`` (e.g. tokenized tool results, >= 1 token each) to ``slots`` and
        (``resume``) sets them RUNNING again. Only the span's tokens are computed; the budget
        is charged len(span); stop matching restarts after the span."""
        if len(spans) != len(np.atleast_1d(slots)):
            raise ValueError("one span per slot")
        padded, nb = self._slots(slots)
        n = len(spans)
        idx = padded[:n]
        lens = np.asarray([len(s) for s in spans])
        if lens.min() < 1:
            raise ValueError("spans must hold at least one token")
        if np.any(self.status[idx] == FREE):
            raise ValueError(f"cannot append to a free slot: {idx[self.status[idx] == FREE].tolist()}")
        over = self.lengths[idx] + lens > self.capacity - 1
        if over.any():
            raise ValueError(f"appending would overflow the cache of slots {idx[over].tolist()} "
                             f"(capacity {self.capacity}; see Sampler.room)")
        t = prefill_length(int(lens.max()), self.cfg, self.capacity)
        resume = np.broadcast_to(np.asarray(resume, bool), (n,))
        args = (padded, self._pad_rows(spans, nb, t), self._vec(lens, nb), self._vec([s[-1] for s in spans], nb),
                self._vec(resume, nb, bool))
        window = window_size(int((self.lengths[idx] + t).max()), self.cfg, self.capacity)
        table = self._grow(idx, self.lengths[idx], self.lengths[idx] + lens, "append")
        with self._ctx():
            self.state = self._fns["append"](self.weights, self.state, *args, table, window=window)
        self.lengths[idx] += lens
        self.budget[idx] -= lens
        self.stop_index[idx] = -1
        self.status[idx] = np.where(resume, np.where(self.budget[idx] <= 0, BUDGET, RUNNING), self.status[idx])
        self.stats["prefill_tokens"] += int(lens.sum())
        self.stats["prefill_tokens_padded"] += nb * t

    def fork(self, parents: int | Sequence[int], children: Sequence[int], *, keys=None) -> None:
        """Makes each child slot an exact copy of its parent (one parent for all, or one per
        child). Parents are read before any child is written. Child keys: ``keys`` or a
        split of the parent's stream (``fold_in(parent key, child slot)``)."""
        children = np.asarray(children, np.int32).reshape(-1)
        parents = np.broadcast_to(np.asarray(parents, np.int32), children.shape).copy()
        if np.any(self.status[parents] == FREE):
            raise ValueError("cannot fork a free slot")
        if set(children.tolist()) & set(parents.tolist()):
            raise ValueError("a slot cannot be both parent and child")
        padded, nb = self._slots(children)
        n = len(children)
        parents_p = self._vec(parents, nb)
        explicit = self._vec(np.full(n, keys is not None), nb, bool)
        raw = self._raw_keys(keys, n, nb) if keys is not None else np.zeros((nb,) + self._key_shape, np.uint32)
        copies = None
        if self.alloc is not None:  # share the parents' pages; copy their partial last pages
            self.alloc.check(sum(self.pages_to_fork(int(p), 1) for p in parents), "fork")
            copies = pad_copies(self.num_pages, [c for p, c in zip(parents, children)  # <= 1 per child: size nb
                                                 for c in self.alloc.fork(int(p), int(c), int(self.lengths[p]))], nb)
        with self._ctx():
            self.state = self._fns["fork"](self.state, parents_p, padded, raw, explicit, copies)
        for mirror in (self.status, self.lengths, self.budget, self.stop_index):
            mirror[children] = mirror[parents]
        self.stats["forked_rows"] += n

    def rewind(self, slots: Sequence[int], lengths: Sequence[int], pending: Sequence[int],
               budgets: Sequence[int]) -> None:
        """Returns ``slots`` to an earlier state of their own sequence: ``lengths`` tokens in the
        cache, ``pending`` the next input token, ``budgets`` tokens left (values recorded from
        ``self.lengths`` / the appended span / ``self.budget`` at that point). The slots resume
        decoding from there; nothing is recomputed. With ``fork`` this branches a sequence from
        a point it has already decoded past."""
        padded, nb = self._slots(slots)
        n = len(np.atleast_1d(slots))
        idx = padded[:n]
        lengths = np.asarray(lengths, np.int32).reshape(-1)
        if np.any(self.status[idx] == FREE):
            raise ValueError("cannot rewind a free slot")
        if np.any(lengths > self.lengths[idx]) or np.any(lengths < 0):
            raise ValueError(f"rewind lengths {lengths.tolist()} must be in [0, current lengths "
                             f"{self.lengths[idx].tolist()}]")
        with self._ctx():
            self.state = self._fns["rewind"](self.state, padded, self._vec(lengths, nb), self._vec(pending, nb),
                                             self._vec(budgets, nb))
        if self.alloc is not None:  # a shared page at the new end is copied at the next write
            for s, length in zip(idx, lengths):
                self.alloc.truncate(int(s), int(length))
        budgets = np.asarray(budgets, np.int32).reshape(-1)
        self.lengths[idx], self.budget[idx], self.stop_index[idx] = lengths, budgets, -1
        self.status[idx] = np.where(budgets <= 0, BUDGET, RUNNING)

    def release(self, slots: Sequence[int]) -> None:
        """Frees ``slots`` (they stop decoding; insert may reuse them)."""
        padded, nb = self._slots(slots)
        with self._ctx():
            self.state = self._fns["release"](self.state, padded)
        idx = padded[: len(np.atleast_1d(slots))]
        self.status[idx], self.lengths[idx], self.budget[idx], self.stop_index[idx] = FREE, 0, 0, -1
        if self.alloc is not None:
            for s in idx:
                self.alloc.release(int(s))

    def next_logits(self, slots: Sequence[int]) -> np.ndarray:
        """Raw fp32 logits [n, V] the next step of ``slots`` would sample from (state unchanged)."""
        padded, _ = self._slots(slots)
        idx = padded[: len(np.atleast_1d(slots))]
        table = self._grow(idx, self.lengths[idx], self.lengths[idx] + 1, "next_logits")  # the pending token's page
        with self._ctx():
            out = self._fns["next_logits"](self.weights, self.state, padded, table)
        return np.asarray(out)[: len(np.atleast_1d(slots))]

    # ------------------------------------------------------------- convenience
    def generate(self, prompts: Sequence[Sequence[int]], *, keys=None, budgets=None) -> list[dict]:
        """Runs ``prompts`` to completion through the slots (refilling freed slots as they
        finish); returns per prompt: tokens, logprobs, entropies (numpy), status, stop_index.
        Uses only slots that are FREE when called."""
        return generate(self, prompts, keys=keys, budgets=budgets)
