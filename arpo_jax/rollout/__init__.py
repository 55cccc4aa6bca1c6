"""The agent loop (DESIGN.md §1, §3): trajectory-level and ARPO rollouts on the sampler's
slots with host tools, trajectory trees, and the training batch built from them.

* ``config``: ``RolloutConfig`` (policy, M/N/Z, τ/β/α, k, budgets).
* ``trajectory``: ``Trajectory`` (tokens, mask, log-probs, entropies, tool calls, tree
  position) and ``trajectory_record`` (rollout dump lines).
* ``engine``: ``RolloutEngine.run(prompts) -> RolloutResult``.
* ``stats``: rollout metrics.
* ``batch``: trajectories + rewards → advantages → ``PolicyBatch``.
"""

from arpo_jax.rollout.config import POLICIES, RolloutConfig
from arpo_jax.rollout.engine import RolloutEngine, RolloutResult, default_eos_ids
from arpo_jax.rollout.trajectory import ToolRecord, Trajectory, trajectory_record, tree_arrays

__all__ = ["POLICIES", "RolloutConfig", "RolloutEngine", "RolloutResult", "ToolRecord", "Trajectory",
           "default_eos_ids", "trajectory_record", "tree_arrays"]
