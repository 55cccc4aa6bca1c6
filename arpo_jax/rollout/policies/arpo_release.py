"""``rollout.policy: arpo_release``: the entropy-based rollout as the authors' released code
runs it (their verl 0.4 fork; DESIGN.md §2), where it differs from the paper's text:

* H of a segment: the top-10 (``entropy_topk``) log-probs of each of its first 20
  (``entropy_tokens``) model tokens, -Σ p log p summed over all of them (not averaged) and
  divided by ln|V|. The sampler computes the per-token top-k entropy in its decode loop.
* The decision is made when a segment ends with a tool call, on the entropy of that segment
  (not on k look-ahead tokens after the result): ΔH = H_segment - H_initial, where H_initial is
  the same measure over the trajectory's first tokens.
* Branch iff clip(U - β·ΔH, 0, 1) <= τ, U ~ Uniform[0, 1): probability clip(τ + β·ΔH, 0, 1),
  close to a coin flip at β = 0.2, τ = 0.5. Z branches are granted at the call and forked right
  after the result is appended (handed back if the source ends first).
* Refill: one fresh sample per round while a prompt whose trajectories have all ended is
  short of M (serial).
* ``stale_entropy_baseline: true`` keeps the release's bug: H_initial is a table keyed by slot
  index, filled with the first value each slot sees and never reset, so from the second step
  on a decision compares with a stale value of another trajectory. It lives as long as the
  engine (one policy object per engine).
"""

from __future__ import annotations

import numpy as np

from arpo_jax.algorithms.branching import release_branch_decisions, release_branch_probability, release_entropy
from arpo_jax.rollout.policies.base import BranchingPolicy, register
from arpo_jax.rollout.trajectory import Trajectory


@register("arpo_release")
class ArpoReleasePolicy(BranchingPolicy):
    """The released rule: decide at each tool call, fork right after its result."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.topk_entropy = cfg.entropy_topk
        self.stale_initial: dict[int, float] = {}  # the release's bug: H_initial by slot, never reset

    @classmethod
    def check_config(cls, cfg) -> None:
        cls.check_initial_rollouts(cfg)

    @property
    def initial_samples(self) -> int:
        return self.cfg.initial_rollouts

    def segment_entropy(self, traj: Trajectory, start: int, end: int) -> float:
        return release_entropy(traj.topk_entropies[start:end], traj.mask[start:end], self.cfg.entropy_tokens,
                               self.vocab_size)

    def initial_entropy(self, traj: Trajectory, slot: int) -> float:
        h = self.segment_entropy(traj, 0, len(traj.tokens))
        if self.cfg.stale_entropy_baseline:
            self.stale_initial.setdefault(slot, h)
        return h

    def on_segment_end(self, traj: Trajectory, slot: int, start: int, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        h = self.segment_entropy(traj, start, len(traj.tokens))
        h0 = traj.initial_entropy if traj.initial_entropy is not None else h
        if cfg.stale_entropy_baseline:
            h0 = self.stale_initial.get(slot, h0)
        delta = h - h0  # both already divided by ln|V|
        u = float(rng.random())
        prob = float(release_branch_probability(delta, cfg.entropy_weight, cfg.threshold))
        branch = bool(release_branch_decisions(u, delta, cfg.entropy_weight, cfg.threshold))
        return self.decision(traj, entropy=h, initial_entropy=h0, delta_h=delta, probability=prob, uniform=u,
                             branch=branch)

    def refill(self, missing: int) -> int:
        return 1
