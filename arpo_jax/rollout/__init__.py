"""The agent loop (DESIGN.md §1, §3): rollouts on the sampler's slots with host tools, shaped
by a branching policy, and the trajectory trees they produce.

* ``config``: ``RolloutConfig`` (policy, M/N/Z, τ/β/α, k, budgets): the ``rollout:`` section.
* ``policies``: the branching policies by name (``POLICIES``: "trajectory", "arpo",
  "arpo_release"), their hooks and ``register`` (docs/branching.md).
* ``trajectory``: ``Trajectory`` (tokens, mask, log-probs, entropies, tool calls, tree
  position), ``trajectory_record`` (rollout dump lines) and ``tree_arrays``.
* ``engine``: ``RolloutEngine.run(prompts) -> RolloutResult``.
* ``stats``: rollout metrics.

Rewards, advantages and the training batch are built from a ``RolloutResult`` by the trainer
(``arpo_jax.training``).
"""

from arpo_jax.rollout.config import RolloutConfig
from arpo_jax.rollout.engine import RolloutEngine, RolloutResult, default_eos_ids
from arpo_jax.rollout.policies import POLICIES, BranchingPolicy, register
from arpo_jax.rollout.trajectory import ToolRecord, Trajectory, trajectory_record, tree_arrays

__all__ = ["POLICIES", "BranchingPolicy", "RolloutConfig", "RolloutEngine", "RolloutResult", "ToolRecord",
           "Trajectory", "default_eos_ids", "register", "trajectory_record", "tree_arrays"]
