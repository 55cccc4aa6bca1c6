"""``rollout.policy: arpo``: the paper's entropy-based adaptive rollout (ARPO, arXiv 2507.19849,
"Entropy-based Adaptive Rollout"; DESIGN.md §1).

Per prompt, with a budget of M trajectories:

1. N global samples (``initial_rollouts``); each records H_initial, the mean entropy of its
   first k (``entropy_tokens``) tokens.
2. The model generates until a tool call; the tool runs; its result is appended.
3. After the result the model generates k more tokens; H_t is their mean entropy and
   ΔH = normalise(H_t - H_initial) (``entropy_normalization``: "none", "log_vocab", "initial").
4. P = clip(α + β·ΔH, 0, 1) (α ``base_probability``, β ``entropy_weight``); the trajectory
   branches if P > τ (``threshold``) — ``paper_decision: threshold``, the paper's text — or
   with probability P — ``paper_decision: stochastic``. A branch is Z (``branches_per_source``)
   partial rollouts forked from the point right after the result: they share the whole prefix,
   result included, and diverge from the first token after it (the k look-ahead tokens stay
   with the source).
5. Branching stops once the prompt has M trajectories (the engine grants no more); if all of
   its trajectories end below M, all missing ones are sampled at once as fresh global samples.

Entropies are the exact full-vocabulary entropies the sampler returns per token; the math is
in ``arpo_jax.algorithms.branching``.
"""

from __future__ import annotations

import numpy as np

from arpo_jax.algorithms.branching import entropy_delta, paper_branch_decisions, paper_branch_probability
from arpo_jax.rollout.policies.base import BranchingPolicy, register
from arpo_jax.rollout.trajectory import Trajectory


@register("arpo")
class ArpoPolicy(BranchingPolicy):
    """The paper's rule: decide k tokens after each tool result, fork from right after it."""

    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.lookahead_tokens = cfg.entropy_tokens  # step 3: k tokens after each result

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        cls.check_initial_rollouts(cfg)

    @property
    def initial_samples(self) -> int:  # step 1
        return self.cfg.initial_rollouts

    def on_lookahead(self, traj: Trajectory, slot: int, start: int, rng: np.random.Generator) -> dict:
        """Steps 3–4 for the result that ended at response position ``start``."""
        cfg = self.cfg
        h = self.segment_entropy(traj, start, len(traj.tokens))
        h0 = traj.initial_entropy if traj.initial_entropy is not None else h
        delta = float(entropy_delta(h, h0, cfg.entropy_normalization, self.vocab_size))
        u = float(rng.random())  # drawn under both readings, so the prompt's later draws do not depend on the reading
        prob = float(paper_branch_probability(delta, cfg.base_probability, cfg.entropy_weight))
        branch = bool(paper_branch_decisions(prob, u, cfg.threshold, stochastic=cfg.paper_decision == "stochastic"))
        return self.decision(traj, entropy=h, initial_entropy=h0, delta_h=delta, probability=prob, uniform=u,
                             branch=branch)

    def refill(self, missing: int) -> int:  # step 5: all missing at once
        return missing
