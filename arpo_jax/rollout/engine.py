"""The agent loop: sampler slots + host tools, with a branching policy.

``RolloutEngine.run(prompts)`` drives one ``Sampler`` in rounds. Each round:

1. queued prompts are admitted while their whole budget can be served (``scheduler.py``: M
   slots reserved per prompt; with the paged KV layout also an estimate of its pages). An
   admitted prompt is prefilled once, into one slot; its other initial samples are forks of it
   (each with its own key), and later refills are forks of its last slot rewound to the prompt;
2. with the paged layout, the round is planned in pages: prompts whose need does not fit the
   free pages sit the round out (youngest first), and when not even the oldest fits the
   youngest admitted prompt is evicted (released, discarded, re-queued first: it re-runs
   identically);
3. due tool results of the running prompts are appended (``append``: only the result's tokens
   are computed) and their slots resume;
4. one ``decode_chunk`` advances every RUNNING slot of the running prompts; a slot that stopped
   at a closing tool tag has its call parsed and submitted to the ``ToolDispatcher`` (a thread
   pool);
5. the branching policy (``rollout.policy``, ``arpo_jax.rollout.policies``) is asked at a
   segment's end and k tokens after a result whether to branch; granted branches (capped only
   by the prompt's budget M: its reservation holds their slots) fork the slot (``fork``, +
   ``rewind`` to the point right after the result when the decision came later); nothing is
   recomputed;
6. a prompt whose trajectories have all ended below its budget gets the expansions its policy
   asks for (tree search: new chains forked from node boundaries of finished trajectories,
   whose slots the prompt holds until it completes) or else the fresh samples it asks for.

Randomness is per prompt: prompt j of ``run(prompts, seed=s, prompt_offset=o)`` draws its
branching decisions and its trajectories' sampling keys from its own ``numpy.random.Generator``
seeded by (s, o + j), in the order of its own events, and counts time in its own rounds. With
``deterministic`` tools (a result is appended one round of the prompt after its call) a
prompt's trajectories are a function of (params, prompt, s, o + j): independent of the other
prompts, of ``num_slots``, of the KV layout and memory (pausing and eviction included), so a
step rolled out in shards (one per JAX process, each with its ``prompt_offset``) gives exactly
the trajectories of one run over all of it. Exceptions: ``stale_entropy_baseline`` (keyed by
slot) and non-deterministic tools. ``RolloutConfig``: the knobs; docs/branching.md: the policies.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Sequence

import numpy as np

from arpo_jax.rollout.config import RolloutConfig
from arpo_jax.rollout.policies import make_policy
from arpo_jax.rollout.policies.base import next_token_entropy
from arpo_jax.rollout.scheduler import PageBudget, PromptRun, pages_for, round_need, worst_case_pages
from arpo_jax.rollout.stats import rollout_stats
from arpo_jax.rollout.steps import AgentSteps
from arpo_jax.rollout.trajectory import Trajectory
from arpo_jax.sampling import RUNNING, Sampler, SamplingConfig
from arpo_jax.tools import ProtocolConfig, stop_sequences

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>")


def default_eos_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS plus the end-of-turn tokens of the chat templates we know."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    return tuple(dict.fromkeys(int(i) for i in ids))


class RolloutResult:
    """Trajectories (prompt order, then creation order; ``uid`` = list index), per-decision
    branching records and rollout metrics."""

    def __init__(self, trajectories: list[Trajectory], decisions: list[dict], stats: dict[str, float]):
        self.trajectories, self.decisions, self.stats = trajectories, decisions, stats

    def by_prompt(self) -> dict[int, list[Trajectory]]:
        out: dict[int, list[Trajectory]] = {}
        for t in self.trajectories:
            out.setdefault(t.prompt_index, []).append(t)
        return out


class RolloutEngine(AgentSteps):
    """Runs the agent loop for batches of prompts on one sampler (see the module docstring).

    model: the policy (``Transformer``); tokenizer: its HF tokenizer; dispatcher: a
    ``ToolDispatcher``; num_prompts: prompts per ``run`` (sizes the slots: num_prompts × M
    unless ``cfg.num_slots``, and the paged pool: num_prompts × one prompt's worst case unless
    ``cfg.kv_pages``); mesh: slots and parameters sharded on it.
    """

    def __init__(self, model, tokenizer, dispatcher, cfg: RolloutConfig, *, protocol: ProtocolConfig | None = None,
                 mesh=None, num_prompts: int = 1, seed: int = 0, eos_ids: Sequence[int] | None = None,
                 cache_dtype=None, tok_bytes=None):
        self.cfg, self.tokenizer, self.dispatcher = cfg, tokenizer, dispatcher
        self.protocol = protocol or getattr(dispatcher, "protocol", None) or ProtocolConfig()
        self.stops = stop_sequences(self.protocol)
        self.eos_ids = tuple(eos_ids) if eos_ids else default_eos_ids(tokenizer)
        if not self.eos_ids:
            raise ValueError("the tokenizer has no EOS token; pass eos_ids")
        self.vocab_size = len(tokenizer)
        self.policy = make_policy(cfg, self.vocab_size)
        self.budget = self.policy.budget  # trajectories a prompt makes = slots reserved (M; tree search more)
        self.num_slots = cfg.num_slots or num_prompts * self.budget
        if self.num_slots < self.budget:
            what = "rollout.total_rollouts" if self.budget == cfg.total_rollouts else "the trajectories a prompt makes"
            raise ValueError(f"rollout.num_slots ({self.num_slots}) is below {what} ({self.budget}): a prompt "
                             f"needs a slot for each")
        self.worst_pages = worst_case_pages(cfg.max_prompt_tokens, cfg.max_response_tokens, self.budget,
                                            cfg.page_size, cfg.chunk_size)
        num_pages = cfg.kv_pages or num_prompts * self.worst_pages
        if cfg.kv_layout == "paged" and num_pages < self.worst_pages:
            raise ValueError(f"rollout.kv_pages ({num_pages}) cannot hold one prompt's worst case "
                             f"({self.worst_pages} pages of {cfg.page_size} tokens)")
        scfg = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, greedy=cfg.greedy,
                              max_new_tokens=cfg.max_response_tokens, stop_strings=self.stops, eos_ids=self.eos_ids,
                              vocab_size=min(self.vocab_size, model.cfg.vocab_size), chunk_size=cfg.chunk_size,
                              topk_entropy=self.policy.topk_entropy, **self._layout_kwargs(num_pages))
        capacity = cfg.slot_capacity  # paged: whole pages (the budget, not the capacity, ends a trajectory)
        capacity = pages_for(capacity, cfg.page_size) * cfg.page_size if cfg.kv_layout == "paged" else capacity
        self.sampler = Sampler(model, scfg, num_slots=self.num_slots, capacity=capacity, tokenizer=tokenizer,
                               tok_bytes=tok_bytes, mesh=mesh, seed=seed, cache_dtype=cache_dtype)
        self.pages = PageBudget(num_pages, cfg.page_size, self.budget, cfg.chunk_size,
                                self.worst_pages) if cfg.kv_layout == "paged" else None

    def _layout_kwargs(self, num_pages: int) -> dict:
        """The sampler's KV layout settings (the contiguous layout needs none)."""
        cfg = self.cfg
        if cfg.kv_layout == "contiguous":
            return {}
        return dict(kv_layout=cfg.kv_layout, page_size=cfg.page_size, num_pages=num_pages)

    def update_params(self, model_or_params) -> None:
        """New policy weights for the next ``run`` (same shapes and shardings)."""
        self.sampler.update_params(model_or_params)

    # ------------------------------------------------------------------------ scheduling
    def _admit(self) -> None:
        """Admits queued prompts (in order) while their reservation fits (module docstring)."""
        m = self.budget
        while self._queue and (len(self._runs) + 1) * m <= self.num_slots:
            p = self._queue[0]
            if self.pages is not None and not (self.pages.can_admit(len(self._runs)) and self.sampler.pages_free()
                                               >= pages_for(len(self._prompts[p]), self.cfg.page_size) + m):
                return
            self._start_prompt(self._queue.popleft())

    def _start_prompt(self, p: int) -> None:
        """Prefills prompt ``p`` once and forks its other initial samples from it."""
        run = PromptRun(p, self._seed, self._offset)
        self._runs[p] = run
        slot = self._free_slots(1)[0]
        self.sampler.insert([slot], [self._prompts[p]], budgets=[self.cfg.max_response_tokens],
                            keys=[self._key(run)])
        self._counters["prompt_prefills"] += 1
        self._occupy(run, slot, self._new_traj(run))
        root_h = None
        if self.policy.wants_root_entropy:
            logits = self.sampler.next_logits([slot])[0, : self.sampler.cfg.vocab_size]
            root_h = float(next_token_entropy(logits, self.sampler.cfg.effective_temperature))
        n = int(self.policy.initial_samples_for(root_h, run.rng))
        if not 1 <= n <= self.budget:
            raise ValueError(f"policy {self.policy.name!r} asked for {n} initial samples; must be in [1, M]")
        run.count = n
        self._fresh(run, slot, n - 1, rewind=False)

    def _round_pages(self, run: PromptRun) -> int:
        """Pages ``run`` may take this round: appends of its due results, a chunk per running
        slot, and a partial page + a chunk for every trajectory it may still fork."""
        grows, forks = [], self.budget - run.count
        for s, live in self._live.items():
            if live.traj.prompt_index != run.index:
                continue
            extra = self.cfg.chunk_size
            if live.pending_call is not None:
                if not self._due(run, live):
                    continue
                extra += len(self._result(s, live)[1])
                forks += live.deferred
            elif self.sampler.status[s] != RUNNING:
                continue
            grows.append(self.sampler.pages_needed([s], extra))
        return round_need(self.cfg.page_size, self.cfg.chunk_size, grows, forks)

    def _plan_round(self) -> list[int]:
        """The admitted prompts that run this round (oldest first); the others are paused."""
        order = list(self._runs)
        if self.pages is None:
            return order
        while True:
            k = self.pages.plan([self._round_pages(self._runs[p]) for p in order], self.sampler.pages_free())
            if k:
                self._counters["paused_rounds"] += len(order) - k
                return order[:k]
            if len(order) == 1:
                raise RuntimeError(f"prompt {order[0]} cannot proceed alone in {self.pages.num_pages} KV pages")
            self._evict(order.pop())

    def _evict(self, p: int) -> None:
        """Releases prompt ``p``'s slots, discards its trajectories and decisions and puts it
        first in the queue: re-admitted, it re-runs from its re-seeded stream identically."""
        slots = [s for s, live in self._live.items() if live.traj.prompt_index == p]
        for s in slots:
            del self._live[s]
        slots += self._release_held(p, release=False)
        if slots:
            self.sampler.release(slots)
        del self._runs[p]
        self._queue.appendleft(p)
        self._counters["evictions"] += 1

    def _complete(self, run: PromptRun) -> None:
        """The prompt is done: its held slots are released and its policy picks the
        trajectories to return (``select``; those left out count as pruned branches)."""
        del self._runs[run.index]
        self._done[run.index] = run
        self._release_held(run.index)
        if self.pages is not None:
            self.pages.completed(run)
        kept = self.policy.select(run.trajs, run.rng)
        self._counters["pruned"] += len(run.trajs) - len(kept)
        run.trajs = kept

    def _release_held(self, p: int, release: bool = True) -> list[int]:
        """Forgets (``release``: and frees) the held slots of prompt ``p``'s finished trajectories."""
        slots = [s for s, t in self._held.items() if t.prompt_index == p]
        for s in slots:
            del self._held[s]
        if slots and release:
            self.sampler.release(slots)
        return slots

    # ---------------------------------------------------------------------------- loop
    def run(self, prompts: Sequence[Sequence[int]], *, seed: int = 0, prompt_offset: int = 0) -> RolloutResult:
        """Rolls out ``prompts`` (token ids; longer than ``max_prompt_tokens`` are cut from the
        left): M trajectories each. Returns a ``RolloutResult`` (``prompt_index`` counts from 0).

        prompt_offset: the position of ``prompts[0]`` in the whole batch when this call rolls out
        one shard of it; prompt j's randomness is seeded by (seed, prompt_offset + j).
        """
        cfg = self.cfg
        t_start = time.perf_counter()
        if seed < 0 or prompt_offset < 0:
            raise ValueError(f"seed ({seed}) and prompt_offset ({prompt_offset}) must be >= 0")
        cut = [len(p) > cfg.max_prompt_tokens for p in prompts]
        self._prompts = [list(p[-cfg.max_prompt_tokens:]) for p in prompts]
        if any(len(p) == 0 for p in self._prompts):
            raise ValueError("empty prompt")
        self._seed, self._offset, self._uid = seed, prompt_offset, 0
        self._queue, self._runs, self._done, self._live = deque(range(len(prompts))), {}, {}, {}
        self._held = {}  # slot -> finished trajectory whose cache a later expansion may fork (tree search)
        self._counters = Counter(prompt_prefills=0, evictions=0, paused_rounds=0, peak_live=0, pruned=0)
        before, timing = dict(self.sampler.stats), Counter()
        while self._queue or self._runs:
            self._admit()
            self._wait_for_tools()
            active = self._plan_round()
            t0 = time.perf_counter()
            self._collect_tools(set(active))
            timing["tools_wait_s"] += time.perf_counter() - t0
            self._decode_round(active, timing)
        trajs, decisions = self._gather(len(prompts))
        timing["total_s"] = time.perf_counter() - t_start
        sampler_delta = {k: self.sampler.stats[k] - before[k] for k in before}
        scheduling = self._scheduling_stats(len(prompts), trajs)
        stats = rollout_stats(trajs, decisions, timing, sampler_delta, len(prompts), sum(cut), scheduling)
        return RolloutResult(trajs, decisions, stats)

    def _wait_for_tools(self) -> None:
        """Non-deterministic tools: when no slot can decode, waits for the first result."""
        if self.cfg.deterministic or any(self.sampler.status[s] == RUNNING for s in self._live):
            return
        pending = [live.pending_call[0] for live in self._live.values() if live.pending_call is not None]
        if pending and not any(f.done() for f in pending):
            wait(pending, return_when=FIRST_COMPLETED)

    def _decode_round(self, active: list[int], timing: Counter) -> None:
        """One chunk for the running slots of the ``active`` prompts (a round of their clocks)."""
        active = [p for p in active if p in self._runs]  # some may have completed at their results
        chosen = set(active)
        slots = [s for s, live in self._live.items() if live.traj.prompt_index in chosen]
        running = any(self.sampler.status[s] == RUNNING for s in slots)
        for p in active:
            self._runs[p].clock += 1
        self._counters["peak_live"] = max(self._counters["peak_live"], len(self._live))
        if not running:
            return  # an idle round: the prompts' tools are a round closer
        t0 = time.perf_counter()
        if len(active) == len(self._runs):
            res = self.sampler.decode_chunk()
        else:
            allowed = np.zeros(self.num_slots, bool)
            allowed[slots] = True
            res = self.sampler.decode_chunk(allowed=allowed)
        timing["generate_s"] += time.perf_counter() - t0
        self._consume(res, slots)

    def _gather(self, num_prompts: int) -> tuple[list[Trajectory], list[dict]]:
        """Every prompt's trajectories and decisions in prompt order, uids renumbered to list
        positions; texts decoded and the entropy after each tool result filled in."""
        runs = [self._done[p] for p in range(num_prompts)]
        trajs = [t for r in runs for t in r.trajs]
        uid = {t.uid: i for i, t in enumerate(trajs)}
        for t in trajs:
            t.uid, t.parent = uid[t.uid], uid[t.parent] if t.parent >= 0 else -1
        decisions = [d for r in runs for d in r.decisions]
        for d in decisions:
            d["uid"] = uid[d["uid"]]
        k = self.cfg.entropy_tokens
        for t in trajs:
            t.text = self._decode(t.tokens)
            for c in t.tool_calls:  # mean entropy of the first k model tokens after each result
                if c.entropy_after != c.entropy_after:
                    after = np.asarray(t.entropies[c.end:])[np.asarray(t.mask[c.end:], bool)][:k]
                    c.entropy_after = float(after.mean()) if after.size else float("nan")
        return trajs, decisions

    def _scheduling_stats(self, num_prompts: int, trajs: list[Trajectory]) -> dict[str, float]:
        runs = self._done.values()
        granted, returned = sum(r.granted for r in runs), sum(r.returned for r in runs)
        made, pruned = sum(t.parent >= 0 for t in trajs), self._counters["pruned"]
        out = dict(branches_granted=granted, branches_made=made, branches_returned=returned, branches_pruned=pruned,
                   branches_dropped=granted - returned - made - pruned,
                   prompt_prefills_per_prompt=self._counters["prompt_prefills"] / max(num_prompts, 1),
                   evictions=self._counters["evictions"], paused_prompt_rounds=self._counters["paused_rounds"],
                   peak_trajectories_in_flight=self._counters["peak_live"])
        if self.pages is not None:
            out["kv_pages"] = self.pages.num_pages
        return {k: float(v) for k, v in out.items()}

    def _decode(self, tokens: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=False)
        eos_texts = [self.tokenizer.convert_ids_to_tokens(i) for i in self.eos_ids]
        for e in eos_texts:
            if e and text.endswith(e):
                text = text[: -len(e)]
        return text
