"""The agent loop: sampler slots + host tools, with a branching policy.

``RolloutEngine.run(prompts)`` drives one ``Sampler`` between chunks of on-device decoding:

1. queued trajectories start in free slots (``insert``: prompt prefilled once);
2. one ``decode_chunk`` advances every RUNNING slot; slots waiting for a tool ride along;
3. a slot that stopped at a closing tool tag has its segment parsed and its call submitted to
   the ``ToolDispatcher`` (a thread pool), and the loop goes on decoding the other slots;
4. finished tool calls are appended (``append``: only the result's tokens are computed) and
   their slots resume;
5. the branching policy (``rollout.policy``, ``arpo_jax.rollout.policies``) is asked at a
   segment's end and k tokens after a result whether to branch; granted branches fork the
   slot (``fork``, + ``rewind`` to the point right after the result when the decision came
   later); nothing is recomputed;
6. a prompt whose trajectories have all ended below M gets the fresh samples its policy asks for.

Randomness is per prompt: prompt j of ``run(prompts, seed=s, prompt_offset=o)`` draws its
branching decisions and its trajectories' sampling keys (samples and branches) from its own
``numpy.random.Generator`` seeded by (s, o + j), in the order of its own events. With
``deterministic`` tools these events do not depend on the batch's other prompts either (a
round in which no slot can decode still counts), so a prompt's trajectories are a function of
(params, prompt, s, o + j): a step rolled out in shards (one per JAX process, each with its
``prompt_offset``) gives exactly the trajectories of one run over all of it. Exceptions:
``num_slots`` < prompts × M (prompts compete for slots), ``stale_entropy_baseline`` (keyed by
slot), non-deterministic tools. ``RolloutConfig``: the knobs; docs/branching.md: the policies.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Sequence

import numpy as np

from arpo_jax.rollout.config import RolloutConfig
from arpo_jax.rollout.policies import make_policy
from arpo_jax.rollout.stats import rollout_stats
from arpo_jax.rollout.trajectory import ToolRecord, Trajectory
from arpo_jax.sampling import BUDGET, CAPACITY, EOS, RUNNING, STOP_STRING, Sampler, SamplingConfig
from arpo_jax.tools import ParseError, ProtocolConfig, stop_sequences

FINISH = {EOS: "eos", BUDGET: "budget", CAPACITY: "capacity"}
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>")


def default_eos_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's EOS plus the end-of-turn tokens of the chat templates we know."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    return tuple(dict.fromkeys(int(i) for i in ids))


class RolloutResult:
    """Trajectories (uid order), per-decision branching records and rollout metrics."""

    def __init__(self, trajectories: list[Trajectory], decisions: list[dict], stats: dict[str, float]):
        self.trajectories, self.decisions, self.stats = trajectories, decisions, stats

    def by_prompt(self) -> dict[int, list[Trajectory]]:
        out: dict[int, list[Trajectory]] = {}
        for t in self.trajectories:
            out.setdefault(t.prompt_index, []).append(t)
        return out


class _Live:
    """Host bookkeeping of one occupied slot."""

    __slots__ = ("traj", "mark", "pending_call", "deferred")

    def __init__(self, traj: Trajectory):
        self.traj = traj
        self.mark = None  # look-ahead: (cache length, pending token, budget, response pos) right after a result
        self.pending_call = None  # (future, tool, body, entropy before, decode round) while a tool runs
        self.deferred = 0  # branches granted at the call, forked once its result is appended


class RolloutEngine:
    """Runs the agent loop for batches of prompts on one sampler (see the module docstring).

    model: the policy (``Transformer``); tokenizer: its HF tokenizer; dispatcher: a
    ``ToolDispatcher``; num_prompts: prompts per ``run`` (sizes the slots: num_prompts × M
    unless ``cfg.num_slots``); mesh: slots and parameters sharded on it.
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
        scfg = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, greedy=cfg.greedy,
                              max_new_tokens=cfg.max_response_tokens, stop_strings=self.stops, eos_ids=self.eos_ids,
                              vocab_size=min(self.vocab_size, model.cfg.vocab_size), chunk_size=cfg.chunk_size,
                              topk_entropy=self.policy.topk_entropy)
        self.num_slots = cfg.num_slots or num_prompts * cfg.total_rollouts
        self.sampler = Sampler(model, scfg, num_slots=self.num_slots, capacity=cfg.slot_capacity, tokenizer=tokenizer,
                               tok_bytes=tok_bytes, mesh=mesh, seed=seed, cache_dtype=cache_dtype)

    def update_params(self, model_or_params) -> None:
        """New policy weights for the next ``run`` (same shapes and shardings)."""
        self.sampler.update_params(model_or_params)

    # ------------------------------------------------------------------------ branching
    def _record(self, decision: dict | None) -> int:
        """Records a policy's decision; returns the branches granted: Z if it branches, capped
        by the prompt's budget M and the free slots."""
        if decision is None:
            return 0
        self.decisions.append(decision)
        p = decision["prompt_index"]
        if not decision["branch"]:
            return 0
        granted = max(0, min(self.cfg.branches_per_source, self.cfg.total_rollouts - self._count[p],
                             len(self._free_slots())))
        decision["granted"] = granted
        self._count[p] += granted
        return granted

    def _below_budget(self, traj: Trajectory) -> bool:
        """Decision hooks are called only while the trajectory's prompt has fewer than M."""
        return self._count[traj.prompt_index] < self.cfg.total_rollouts

    def _segment_end(self, slot: int, live: _Live, start: int) -> None:
        """A segment ended with a (submitted) tool call: granted branches wait for the result."""
        traj = live.traj
        if self._below_budget(traj):
            live.deferred = self._record(self.policy.on_segment_end(traj, slot, start, self._rngs[traj.prompt_index]))

    def _result_appended(self, slot: int, live: _Live, last_token: int) -> None:
        """Deferred branches fork now; a look-ahead policy gets the point right after the result."""
        if live.deferred:
            n, live.deferred = live.deferred, 0
            self._fork(slot, n)
        if self.policy.lookahead_tokens:
            live.mark = (int(self.sampler.lengths[slot]), last_token, int(self.sampler.budget[slot]),
                         len(live.traj.tokens))

    def _lookahead(self, slot: int, live: _Live) -> None:
        """The policy's look-ahead tokens after a result are in: its decision forks from the
        point right after the result."""
        mark, live.mark = live.mark, None
        traj = live.traj
        if not self._below_budget(traj):
            return
        granted = self._record(self.policy.on_lookahead(traj, slot, mark[3], self._rngs[traj.prompt_index]))
        if granted:
            self._fork(slot, granted, rewind_to=mark)

    def _drop_deferred(self, live: _Live) -> None:
        """A granted branch that cannot happen (the source ended) gives its budget back."""
        if live.deferred:
            self._count[live.traj.prompt_index] -= live.deferred
            live.deferred = 0

    # --------------------------------------------------------------------------- slots
    def _free_slots(self) -> list[int]:
        return [s for s in range(self.num_slots) if s not in self._live]

    def _new_traj(self, p: int) -> Trajectory:
        t = Trajectory(prompt_index=p, uid=len(self._trajs), prompt_tokens=self._prompts[p])
        self._trajs.append(t)
        return t

    def _start(self) -> None:
        free = self._free_slots()[: len(self._queue)]
        if not free:
            return
        trajs = [self._new_traj(self._queue.popleft()) for _ in free]
        self.sampler.insert(free, [t.prompt_tokens for t in trajs], budgets=[self.cfg.max_response_tokens] * len(free),
                            keys=[self._key(t.prompt_index) for t in trajs])
        for s, t in zip(free, trajs):
            self._live[s] = _Live(t)

    def _key(self, prompt: int) -> np.ndarray:
        """A fresh sampling key (raw uint32 [2]) from ``prompt``'s stream."""
        return self._rngs[prompt].integers(0, 2**32, 2, dtype=np.uint32)

    def _fork(self, slot: int, n: int, rewind_to=None) -> None:
        """``n`` branches of ``slot``'s trajectory: forked at the current point or, with
        ``rewind_to`` (a look-ahead decision's mark), at the point right after the result."""
        parent = self._live[slot].traj
        children = self._free_slots()[:n]
        self._count[parent.prompt_index] -= n - len(children)  # only with cfg.num_slots < prompts × M
        if not children:
            return
        n = len(children)
        self.sampler.fork(slot, children, keys=[self._key(parent.prompt_index) for _ in children])
        upto = len(parent.tokens)
        if rewind_to is not None:
            length, pending, budget, upto = rewind_to
            self.sampler.rewind(children, [length] * n, [pending] * n, [budget] * n)
        for c in children:
            child = parent.branch(len(self._trajs), upto)
            self._trajs.append(child)
            self._live[c] = _Live(child)

    def _finish(self, slot: int, reason: str) -> None:
        live = self._live.pop(slot)
        live.traj.finish_reason = reason
        self.sampler.release([slot])

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
        self._rngs = [np.random.default_rng([seed, prompt_offset + j]) for j in range(len(prompts))]
        cut = [len(p) > cfg.max_prompt_tokens for p in prompts]
        self._prompts = [list(p[-cfg.max_prompt_tokens:]) for p in prompts]
        if any(len(p) == 0 for p in self._prompts):
            raise ValueError("empty prompt")
        self._trajs, self._live, self.decisions, self._round = [], {}, [], 0
        first = self.policy.initial_samples
        self._count = [first] * len(prompts)
        self._queue = deque(p for p in range(len(prompts)) for _ in range(first))
        before = dict(self.sampler.stats)
        timing = Counter()
        while self._queue or self._live:
            self._start()
            t0 = time.perf_counter()
            self._collect_tools(block=not any(self.sampler.status[s] == RUNNING for s in self._live))
            timing["tools_wait_s"] += time.perf_counter() - t0
            if any(self.sampler.status[s] == RUNNING for s in self._live):
                t0 = time.perf_counter()
                res = self.sampler.decode_chunk()
                self._round += 1
                timing["generate_s"] += time.perf_counter() - t0
                self._consume(res)
            self._refill()
        k = cfg.entropy_tokens
        for t in self._trajs:
            t.text = self._decode(t.tokens)
            for c in t.tool_calls:  # mean entropy of the first k model tokens after each result
                if c.entropy_after != c.entropy_after:
                    after = np.asarray(t.entropies[c.end:])[np.asarray(t.mask[c.end:], bool)][:k]
                    c.entropy_after = float(after.mean()) if after.size else float("nan")
        timing["total_s"] = time.perf_counter() - t_start
        sampler_delta = {k: self.sampler.stats[k] - before[k] for k in before}
        stats = rollout_stats(self._trajs, self.decisions, timing, sampler_delta, len(prompts), sum(cut))
        return RolloutResult(self._trajs, self.decisions, stats)

    def _decode(self, tokens: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=False)
        eos_texts = [self.tokenizer.convert_ids_to_tokens(i) for i in self.eos_ids]
        for e in eos_texts:
            if e and text.endswith(e):
                text = text[: -len(e)]
        return text

    def _consume(self, res) -> None:
        """Adds a chunk's tokens to the trajectories and acts on every slot that stopped."""
        for slot in list(self._live):
            live = self._live[slot]
            if live.pending_call is not None:  # waiting for its tool: did not decode
                continue
            traj = live.traj
            n = int(res.num_new[slot])
            if n:
                toks, lps, ents = res.new_tokens(slot)
                topk = res.topk_entropies[slot, :n] if res.topk_entropies is not None else None
                traj.add_model_tokens(toks, lps, ents, topk)
            status = int(res.status[slot])
            if traj.initial_entropy is None and (traj.num_model_tokens >= self.cfg.entropy_tokens or status != RUNNING):
                traj.initial_entropy = self.policy.initial_entropy(traj, slot)
            if live.mark is not None and (np.sum(traj.mask[live.mark[3]:]) >= self.policy.lookahead_tokens
                                          or status != RUNNING):
                self._lookahead(slot, live)
            if status == RUNNING:
                continue
            if status == STOP_STRING:
                self._tool_call(slot, live, int(res.stop_index[slot]))
            else:
                self._finish(slot, FINISH.get(status, "stop"))

    def _tool_call(self, slot: int, live: _Live, stop_index: int) -> None:
        traj = live.traj
        if traj.num_tool_calls >= self.cfg.max_tool_calls:
            if self.cfg.tool_limit_action == "eos":
                traj.add_inserted_tokens([self.eos_ids[0]])
            self._finish(slot, "tool_limit")
            return
        start = traj.segment_start()
        seg_text = self._decode(traj.tokens[start:])
        stop = self.stops[stop_index] if 0 <= stop_index < len(self.stops) else None
        call = self.dispatcher.parse(seg_text, stop=stop)
        if call is None:
            call = ParseError("no_call", "Error: no complete tool call was found before the closing tag.")
        m = np.asarray(traj.mask[start:], bool)
        before = float(np.asarray(traj.entropies[start:])[m][-self.cfg.entropy_tokens:].mean()) if m.any() else 0.0
        live.pending_call = (self.dispatcher.submit(call), getattr(call, "tool", "") or "", getattr(call, "body", ""),
                             before, self._round)
        self._segment_end(slot, live, start)

    def _due_tools(self, block: bool) -> list[int]:
        """Slots whose tool result is to be appended now (deterministic: submitted before the
        last chunk; else: done), waiting for them as needed."""
        pending = {s: l for s, l in self._live.items() if l.pending_call is not None}
        if not pending:
            return []
        if self.cfg.deterministic:
            if block:  # nothing can decode: an idle round, as if a chunk had run without these slots
                self._round += 1
            ready = [s for s, l in pending.items() if l.pending_call[4] < self._round]
            wait([pending[s].pending_call[0] for s in ready])
            return ready
        if block:
            wait([l.pending_call[0] for l in pending.values()], return_when=FIRST_COMPLETED)
        return [s for s, l in pending.items() if l.pending_call[0].done()]

    def _collect_tools(self, block: bool) -> None:
        """Appends every finished tool result (blocking for one when nothing else can run).
        Slots are handled in trajectory creation order (``_live`` order), not slot order, so a
        prompt's events do not depend on which slots its trajectories happen to occupy."""
        slots, spans = [], []
        for s in self._due_tools(block):
            live = self._live[s]
            fut, tool, body, before, _ = live.pending_call
            live.pending_call = None
            obs = fut.result()
            ids = self.tokenizer.encode(obs.text, add_special_tokens=False)
            room = min(self.sampler.room(s), int(self.sampler.budget[s]))
            ids = ids[:room]
            traj = live.traj
            rec = ToolRecord(tool=obs.tool or tool, body=body, status=obs.status, ok=obs.ok,
                             latency_s=float(obs.latency_s), start=len(traj.tokens), end=len(traj.tokens) + len(ids),
                             entropy_before=before)
            traj.tool_calls.append(rec)
            if not ids:
                self._drop_deferred(live)
                self._finish(s, "budget")
                continue
            traj.obs_spans.append(traj.add_inserted_tokens(ids))
            slots.append(s)
            spans.append(ids)
        if not slots:
            return
        self.sampler.append(slots, spans)
        for s, ids in zip(slots, spans):
            live = self._live[s]
            if self.sampler.status[s] != RUNNING:  # the result used up the budget
                self._drop_deferred(live)
                self._finish(s, "budget")
                continue
            self._result_appended(s, live, ids[-1])

    def _refill(self) -> None:
        """Prompts whose trajectories all ended below M get the fresh samples their policy asks for."""
        active = Counter(l.traj.prompt_index for l in self._live.values())
        queued = Counter(self._queue)
        for p, n in enumerate(self._count):
            if n < self.cfg.total_rollouts and not active[p] and not queued[p]:
                add = self.policy.refill(self.cfg.total_rollouts - n)
                self._count[p] += add
                self._queue.extend([p] * add)
