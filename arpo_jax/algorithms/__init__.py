"""ARPO / GRPO algorithm math as pure functions on arrays (no model, no sampler).

* ``advantages``: GRPO (verl), Dr.GRPO, REINFORCE++, soft and hard tree attribution.
* ``tree``: the rollout-tree representation (parent, branch_pos) and token-node maps.
* ``segments``: macro actions (spans between tool results), segment <-> token maps.
* ``losses``: PPO clip + dual clip policy loss as (sum, denominator), KL, entropy, log-probs.
* ``accumulation``: exact micro-batch gradient accumulation.
* ``branching``: entropy-based branching rules (paper and release) and the per-prompt budget.
"""

from arpo_jax.algorithms.accumulation import accumulate_gradients, global_mean
from arpo_jax.algorithms.advantages import (
    grpo_advantages,
    group_mean_and_std,
    hard_token_advantages,
    masked_whiten,
    reinforce_pp_token_advantages,
    soft_token_advantages,
)
from arpo_jax.algorithms.branching import (
    BranchingConfig,
    branch_decisions,
    cap_branches_to_budget,
    entropy_delta,
    mean_segment_entropy,
    paper_branch_probability,
    release_branch_decisions,
    release_branch_probability,
    release_segment_entropy,
    release_topk_entropy,
    sample_branch_decisions,
    sample_branch_decisions_np,
    threshold_branch_decisions,
)
from arpo_jax.algorithms.losses import (
    PolicyLossConfig,
    PolicyLossOutput,
    aggregate_loss,
    combine_loss_outputs,
    kl_penalty,
    policy_loss,
    ppo_clipped_token_loss,
    summarize_loss_output,
    token_logprobs_and_entropy,
)
from arpo_jax.algorithms.segments import (
    expand_segment_values,
    reduce_to_segments,
    segment_ids_from_mask,
    segment_present,
    soft_segment_advantages,
)
from arpo_jax.algorithms.tree import node_reduce, token_multiplicity, token_owner, validate_tree

__all__ = [
    "BranchingConfig",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "accumulate_gradients",
    "aggregate_loss",
    "branch_decisions",
    "cap_branches_to_budget",
    "combine_loss_outputs",
    "entropy_delta",
    "expand_segment_values",
    "global_mean",
    "group_mean_and_std",
    "grpo_advantages",
    "hard_token_advantages",
    "kl_penalty",
    "masked_whiten",
    "mean_segment_entropy",
    "node_reduce",
    "paper_branch_probability",
    "policy_loss",
    "ppo_clipped_token_loss",
    "reduce_to_segments",
    "reinforce_pp_token_advantages",
    "release_branch_decisions",
    "release_branch_probability",
    "release_segment_entropy",
    "release_topk_entropy",
    "sample_branch_decisions",
    "sample_branch_decisions_np",
    "segment_ids_from_mask",
    "segment_present",
    "soft_segment_advantages",
    "soft_token_advantages",
    "summarize_loss_output",
    "threshold_branch_decisions",
    "token_logprobs_and_entropy",
    "token_multiplicity",
    "token_owner",
    "validate_tree",
]
