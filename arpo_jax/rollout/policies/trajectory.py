"""``rollout.policy: trajectory``: trajectory-level rollouts (GRPO, the ARPO paper's baseline).

M independent samples per prompt, no branching, no refill (every prompt has M from the start):
all of ``BranchingPolicy``'s defaults.
"""

from __future__ import annotations

from arpo_jax.rollout.policies.base import BranchingPolicy, register


@register("trajectory")
class TrajectoryPolicy(BranchingPolicy):
    """M global samples per prompt."""
