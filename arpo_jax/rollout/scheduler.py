"""Which prompts the rollout runs at a time: admission with a reservation, per-prompt clocks,
and the memory rounds of the paged KV cache (pause, evict).

A prompt is *queued*, then *admitted* (``PromptRun``: its RNG stream, its budget of M
trajectories, its own clock, its trajectories and decisions so far), then *done*.

* Slots. A prompt is admitted only when M slots are reserved for it (the sum of the admitted
  prompts' M never exceeds ``num_slots``). Its initial samples, branches and refills all come
  from its reservation: at most M of its trajectories exist at once (every live or granted one
  is counted in its budget), so a granted branch always finds a slot.
* Pages (``kv_layout: paged``, the sampler has ``pages_free``). Memory, not slots, is the
  limit. A prompt is admitted while the admitted prompts' estimated pages fit the pool
  (``PageBudget.estimate``: its worst case until prompts have completed, then the mean pages a
  completed prompt held, with a margin). Before each round the engine computes every admitted
  prompt's need for the round (``need``); ``PageBudget.plan`` keeps the oldest prompts whose
  needs fit the free pages and pauses the rest (youngest first). When not even the oldest
  fits, the engine evicts the youngest admitted prompt and plans again.
* Clocks. A prompt's clock counts the rounds it took part in (paused rounds do not count), so
  the deterministic-tool rule "a result is appended one round after its call" and every other
  event of the prompt happen at the same point of its own history however many prompts share
  the memory: a prompt's trajectories are a function of (params, prompt, seed, prompt index).
"""

from __future__ import annotations

import numpy as np

from arpo_jax.rollout.trajectory import Trajectory

ESTIMATE_MARGIN = 1.25  # admission estimate = observed mean pages per completed prompt × this


def pages_for(num_tokens: int, page_size: int) -> int:
    """Pages that hold ``num_tokens`` tokens."""
    return -(-num_tokens // page_size)


class PromptRun:
    """Host state of one admitted prompt (discarded whole when the prompt is evicted).

    index: position in ``run``'s prompts; rng: its stream, seeded by (seed, offset + index);
    count: trajectories made or granted (<= M); clock: rounds it took part in; live: its
    trajectories in a slot; trajs / decisions: made so far (creation order); granted /
    returned: branches granted, and handed back because the source ended before the fork.
    """

    __slots__ = ("index", "rng", "count", "clock", "live", "trajs", "decisions", "granted", "returned")

    def __init__(self, index: int, seed: int, offset: int):
        self.index, self.rng = index, np.random.default_rng([seed, offset + index])
        self.count = self.clock = self.live = self.granted = self.returned = 0
        self.trajs: list[Trajectory] = []
        self.decisions: list[dict] = []

    def tree_tokens(self) -> int:
        """Tokens the prompt's tree holds: the prompt once, each trajectory past its fork."""
        return len(self.trajs[0].prompt_tokens) + sum(len(t.tokens) - t.branch_pos for t in self.trajs)


class PageBudget:
    """Admission and round planning in pages for one paged sampler.

    num_pages / page_size: the pool; m: trajectories per prompt; chunk: tokens per round;
    worst: pages one prompt can need at once (``worst_case_pages``).
    """

    def __init__(self, num_pages: int, page_size: int, m: int, chunk: int, worst: int):
        self.num_pages, self.page_size, self.m, self.chunk, self.worst = num_pages, page_size, m, chunk, worst
        self.completed_pages: list[int] = []  # pages of each completed prompt's tree (engine lifetime)

    def estimate(self) -> int:
        """Pages an admitted prompt is expected to hold: its worst case until a prompt has
        completed, then the observed mean × ``ESTIMATE_MARGIN`` (never above the worst case)."""
        if not self.completed_pages:
            return self.worst
        return min(self.worst, int(np.ceil(np.mean(self.completed_pages) * ESTIMATE_MARGIN)))

    def can_admit(self, admitted: int) -> bool:
        """Whether one more prompt fits next to ``admitted`` ones (the first always does)."""
        return admitted == 0 or (admitted + 1) * self.estimate() <= self.num_pages

    def completed(self, run: PromptRun) -> None:
        """Records a completed prompt's pages (tokens of its tree + a partial page per trajectory)."""
        self.completed_pages.append(pages_for(run.tree_tokens(), self.page_size) + len(run.trajs))

    @staticmethod
    def plan(needs: list[int], free: int) -> int:
        """How many of the oldest prompts (``needs`` in admission order) run this round: the
        longest prefix whose needs fit ``free`` pages (0: not even the oldest fits)."""
        total = np.cumsum(needs) if needs else np.zeros(0)
        return int(np.searchsorted(total, free, side="right"))


def worst_case_pages(prompt_tokens: int, response_tokens: int, m: int, page_size: int, chunk: int) -> int:
    """Pages one prompt can need at once: its prompt's pages (shared by its trajectories), M
    trajectories of a whole response (+ one page each for a partial page copied at a fork or
    rewind) and one more chunk's pages per trajectory (planned before the round decodes)."""
    per_traj = pages_for(response_tokens + 1, page_size) + 1 + pages_for(chunk, page_size)
    return pages_for(prompt_tokens, page_size) + m * per_traj


def round_need(page_size: int, chunk: int, grows: list[int], forks: int) -> int:
    """Upper bound on the pages one prompt takes in a round: ``grows`` (the pages each of its
    slots needs for its appended result and the chunk, as the sampler counts them) plus, for
    each of ``forks`` trajectories it may fork, a copied partial page, a chunk and one more
    copy-on-write page."""
    return sum(grows) + forks * (2 + pages_for(chunk, page_size))
