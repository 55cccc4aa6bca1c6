"""The per-slot steps of the agent loop (``RolloutEngine``'s base class): reading a decode
chunk back, tool calls and their results, branching decisions, forks, fresh samples and the
end of a trajectory. Every step acts on one prompt's ``PromptRun`` (its budget, RNG stream
and clock); the loop and the scheduling are in ``engine.py``.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from arpo_jax.rollout.scheduler import PromptRun
from arpo_jax.rollout.trajectory import ToolRecord, Trajectory
from arpo_jax.sampling import BUDGET, CAPACITY, EOS, RUNNING, STOP_STRING
from arpo_jax.tools import ParseError

FINISH = {EOS: "eos", BUDGET: "budget", CAPACITY: "capacity"}


class Live:
    """Host bookkeeping of one occupied slot."""

    __slots__ = ("traj", "mark", "pending_call", "deferred", "deferred_decision", "result")

    def __init__(self, traj: Trajectory):
        self.traj = traj
        self.mark = None  # look-ahead: (cache length, pending token, budget, response pos) right after a result
        self.pending_call = None  # (future, tool, body, entropy before, prompt clock) while a tool runs
        self.deferred = 0  # branches granted at the call, forked once its result is appended
        self.deferred_decision = None  # the decision that granted them
        self.result = None  # (observation, token ids) once the call's result has been read


class AgentSteps:
    """Slot-level steps; ``RolloutEngine`` provides the sampler, policy, config and run state
    (``_runs``: admitted prompts; ``_live``: slot → ``Live`` in creation order)."""

    # ------------------------------------------------------------------ slots and trajectories
    def _free_slots(self, n: int) -> list[int]:
        """``n`` free slots; the reservations guarantee them (an error here is a scheduling bug)."""
        free = [s for s in range(self.num_slots) if s not in self._live and s not in self._held][:n]
        if len(free) < n:
            raise RuntimeError(f"{n} slots needed, {len(free)} free: a prompt outgrew its reservation")
        return free

    def _new_traj(self, run: PromptRun, parent: Trajectory | None = None, upto: int = 0) -> Trajectory:
        self._uid += 1
        if parent is None:
            t = Trajectory(prompt_index=run.index, uid=self._uid, prompt_tokens=self._prompts[run.index])
        else:
            t = parent.branch(self._uid, upto)
        run.trajs.append(t)
        return t

    def _occupy(self, run: PromptRun, slot: int, traj: Trajectory) -> None:
        self._live[slot] = Live(traj)
        run.live += 1

    def _key(self, run: PromptRun) -> np.ndarray:
        """A fresh sampling key (raw uint32 [2]) from the prompt's stream."""
        return run.rng.integers(0, 2**32, 2, dtype=np.uint32)

    def _fresh(self, run: PromptRun, src: int, n: int, rewind: bool) -> None:
        """``n`` fresh samples of ``run``'s prompt forked from ``src`` (a slot holding the
        prompt's cache; ``rewind``: one that has decoded past it) — the prompt is never
        prefilled again. Each sample has its own key from the prompt's stream."""
        if n <= 0:
            return
        children = self._free_slots(n)
        self.sampler.fork(src, children, keys=[self._key(run) for _ in children])
        if rewind:
            prompt = self._prompts[run.index]
            self.sampler.rewind(children, [len(prompt) - 1] * n, [prompt[-1]] * n, [self.cfg.max_response_tokens] * n)
        for c in children:
            self._occupy(run, c, self._new_traj(run))

    def _fork(self, run: PromptRun, slot: int, n: int, rewind_to=None, parent: Trajectory | None = None) -> None:
        """``n`` granted branches of ``slot``'s trajectory (``parent``: given for a held slot):
        forked at the current point or, with ``rewind_to`` (a mark: cache length, pending token,
        budget, response position), at that earlier point."""
        parent = parent or self._live[slot].traj
        children = self._free_slots(n)
        self.sampler.fork(slot, children, keys=[self._key(run) for _ in children])
        upto = len(parent.tokens)
        if rewind_to is not None:
            length, pending, budget, upto = rewind_to
            self.sampler.rewind(children, [length] * n, [pending] * n, [budget] * n)
        for c in children:
            self._occupy(run, c, self._new_traj(run, parent, upto))

    def _finish(self, slot: int, reason: str) -> None:
        """Ends ``slot``'s trajectory. The prompt's last one, below its budget: the policy's
        expansions, else its refill (forked from this slot rewound to the prompt). The slot is
        then released, or held while the prompt runs if the policy forks finished trajectories."""
        live = self._live[slot]
        live.traj.finish_reason = reason
        run = self._runs[live.traj.prompt_index]
        run.live -= 1
        done = False
        if run.live == 0 and not self._expand(run, slot):
            m = self.budget
            add = min(self.policy.refill(m - run.count), m - run.count) if run.count < m else 0
            run.count += add
            self._fresh(run, slot, add, rewind=True)
            done = not add
        del self._live[slot]
        if self.policy.holds_finished:
            self._held[slot] = live.traj
        else:
            self.sampler.release([slot])
        if done:
            self._complete(run)

    def _expand(self, run: PromptRun, slot: int) -> bool:
        """The policy's expansions once all of ``run``'s trajectories have ended (``slot``: the
        last one's, still live): each a new chain forked from its source's slot and rewound to
        the chosen node boundary (nothing re-prefilled). Returns whether any was made."""
        if run.count >= self.budget:
            return False
        picks = self.policy.expand(run.trajs, run.rng)[: self.budget - run.count]
        if not picks:
            return False
        slot_of = {t.uid: s for s, t in self._held.items()}
        slot_of[self._live[slot].traj.uid] = slot
        for src, pos in picks:
            run.count += 1
            run.granted += 1
            self._fork(run, slot_of[src.uid], 1, rewind_to=self._node_mark(src, pos), parent=src)
        return True

    def _node_mark(self, traj: Trajectory, pos: int) -> tuple[int, int, int, int]:
        """The sampler state of ``traj`` at response position ``pos`` (a node boundary: the end
        of the prompt or of a tool result): (cache length, pending token, budget, ``pos``)."""
        seq = traj.prompt_tokens + traj.tokens[:pos]
        return len(seq) - 1, seq[-1], self.cfg.max_response_tokens - pos, pos

    # -------------------------------------------------------------------------- branching
    def _record(self, run: PromptRun, decision: dict | None) -> int:
        """Records a policy's decision; returns the branches granted: Z if it branches, capped
        by the prompt's budget M (its reservation holds a slot for each)."""
        if decision is None:
            return 0
        run.decisions.append(decision)
        decision.setdefault("returned", 0)
        if not decision["branch"]:
            return 0
        granted = max(0, min(self.cfg.branches_per_source, self.budget - run.count))
        decision["granted"] = granted
        run.count += granted
        run.granted += granted
        return granted

    def _segment_end(self, run: PromptRun, slot: int, live: Live, start: int) -> None:
        """A segment ended with a (submitted) tool call: granted branches wait for the result."""
        if run.count < self.budget:
            decision = self.policy.on_segment_end(live.traj, slot, start, run.rng)
            live.deferred = self._record(run, decision)
            live.deferred_decision = decision if live.deferred else None

    def _result_appended(self, run: PromptRun, slot: int, live: Live, last_token: int) -> None:
        """Deferred branches fork now; a look-ahead policy gets the point right after the result."""
        if live.deferred:
            n, live.deferred, live.deferred_decision = live.deferred, 0, None
            self._fork(run, slot, n)
        if self.policy.lookahead_tokens:
            live.mark = (int(self.sampler.lengths[slot]), last_token, int(self.sampler.budget[slot]),
                         len(live.traj.tokens))

    def _lookahead(self, run: PromptRun, slot: int, live: Live) -> None:
        """The look-ahead tokens after a result are in: the decision forks from right after it."""
        mark, live.mark = live.mark, None
        if run.count >= self.budget:
            return
        granted = self._record(run, self.policy.on_lookahead(live.traj, slot, mark[3], run.rng))
        if granted:
            self._fork(run, slot, granted, rewind_to=mark)

    def _return_deferred(self, run: PromptRun, live: Live) -> None:
        """Granted branches whose source ended at its result (budget) are handed back."""
        if live.deferred:
            run.count -= live.deferred
            run.returned += live.deferred
            live.deferred_decision["returned"] = live.deferred
            live.deferred, live.deferred_decision = 0, None

    # ---------------------------------------------------------------------- decode chunks
    def _consume(self, res, slots: list[int]) -> None:
        """Adds a chunk's tokens to the trajectories of ``slots`` (creation order) and acts on
        every slot that stopped."""
        k = self.cfg.entropy_tokens
        for slot in slots:
            live = self._live.get(slot)
            if live is None or live.pending_call is not None:  # ended, or waiting for its tool
                continue
            traj, run = live.traj, self._runs[live.traj.prompt_index]
            n = int(res.num_new[slot])
            if n:
                toks, lps, ents = res.new_tokens(slot)
                topk = res.topk_entropies[slot, :n] if res.topk_entropies is not None else None
                traj.add_model_tokens(toks, lps, ents, topk)
            status = int(res.status[slot])
            if traj.initial_entropy is None and (traj.num_model_tokens >= k or status != RUNNING):
                traj.initial_entropy = self.policy.initial_entropy(traj, slot)
            if live.mark is not None and (np.sum(traj.mask[live.mark[3]:]) >= self.policy.lookahead_tokens
                                          or status != RUNNING):
                self._lookahead(run, slot, live)
            if status == STOP_STRING:
                self._tool_call(run, slot, live, int(res.stop_index[slot]))
            elif status != RUNNING:
                self._finish(slot, FINISH.get(status, "stop"))

    # ------------------------------------------------------------------------------ tools
    def _tool_call(self, run: PromptRun, slot: int, live: Live, stop_index: int) -> None:
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
                             before, run.clock)
        self._segment_end(run, slot, live, start)

    def _due(self, run: PromptRun, live: Live) -> bool:
        """Whether ``live``'s tool result is appended this round: deterministic, submitted in an
        earlier round of the prompt's own clock; else, done."""
        fut: Future = live.pending_call[0]
        return live.pending_call[4] < run.clock if self.cfg.deterministic else fut.done()

    def _result(self, slot: int, live: Live) -> tuple:
        """(observation, token ids cut to the slot's room and budget) of a due call (waits for it)."""
        if live.result is None:
            obs = live.pending_call[0].result()
            ids = self.tokenizer.encode(obs.text, add_special_tokens=False)
            live.result = (obs, ids[:min(self.sampler.room(slot), int(self.sampler.budget[slot]))])
        return live.result

    def _collect_tools(self, active: set[int]) -> None:
        """Appends every due tool result of the ``active`` prompts, in trajectory creation order
        (``_live`` order), so a prompt's events do not depend on its slots' numbers."""
        slots, spans = [], []
        for s, live in list(self._live.items()):
            if live.pending_call is None or live.traj.prompt_index not in active:
                continue
            run = self._runs[live.traj.prompt_index]
            if not self._due(run, live):
                continue
            obs, ids = self._result(s, live)
            _, tool, body, before, _ = live.pending_call
            live.pending_call, live.result = None, None
            traj = live.traj
            traj.tool_calls.append(ToolRecord(
                tool=obs.tool or tool, body=body, status=obs.status, ok=obs.ok, latency_s=float(obs.latency_s),
                start=len(traj.tokens), end=len(traj.tokens) + len(ids), entropy_before=before))
            if not ids:
                self._return_deferred(run, live)
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
            run = self._runs[live.traj.prompt_index]
            if self.sampler.status[s] != RUNNING:  # the result used up the budget
                self._return_deferred(run, live)
                self._finish(s, "budget")
                continue
            self._result_appended(run, s, live, ids[-1])
