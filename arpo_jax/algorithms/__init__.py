"""ARPO / GRPO algorithm math as pure functions on arrays (no model, no sampler).

* ``advantages``: GRPO (verl), Dr.GRPO, REINFORCE++, soft and hard tree attribution.
* ``estimators``: the advantage estimators by name (``algorithm.advantage``); ``tree_grpo``
  registers Tree-GRPO's. A new estimator: one module + its import below.
* ``aepo``: AEPO's pre-monitoring, penalised branch rule and entropy-aware advantage.
* ``tree``: the rollout-tree representation (parent, branch_pos) and token-node maps.
* ``losses``: PPO clip + dual clip policy loss as (sum, denominator), KL, entropy, log-probs.
* ``accumulation``: exact micro-batch gradient accumulation.
* ``branching``: entropy-based branching math (segment entropies, ΔH, the paper and release
  decision rules) in numpy, for the rollout's branching policies (``arpo_jax.rollout.policies``).
"""

from arpo_jax.algorithms import tree_grpo  # noqa: F401  (registers tree, tree_inner, tree_2norm)
from arpo_jax.algorithms.accumulation import accumulate_gradients, batch_moments, global_mean
from arpo_jax.algorithms.aepo import (
    aepo_branch_decisions,
    aepo_branch_probability,
    entropy_balanced_advantages,
    premonitor_initial_samples,
)
from arpo_jax.algorithms.advantages import (
    grpo_advantages,
    group_mean_and_std,
    hard_token_advantages,
    masked_whiten,
    reinforce_pp_token_advantages,
    soft_token_advantages,
    verl_group_normalize,
)
from arpo_jax.algorithms.branching import (
    entropy_delta,
    first_model_tokens,
    mean_entropy,
    paper_branch_decisions,
    paper_branch_probability,
    release_branch_decisions,
    release_branch_probability,
    release_entropy,
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
from arpo_jax.algorithms.estimators import (
    ESTIMATORS,
    AdvantageInputs,
    AdvantageOutput,
    EstimatorOptions,
    check_estimator,
    compute_advantages,
    register_estimator,
)
from arpo_jax.algorithms.tree import (
    branch_concentration,
    node_reduce,
    token_multiplicity,
    token_owner,
    tree_roots,
    validate_tree,
)
from arpo_jax.algorithms.tree_grpo import tree_grpo_advantages

__all__ = [
    "ESTIMATORS",
    "AdvantageInputs",
    "AdvantageOutput",
    "EstimatorOptions",
    "PolicyLossConfig",
    "PolicyLossOutput",
    "accumulate_gradients",
    "aepo_branch_decisions",
    "aepo_branch_probability",
    "batch_moments",
    "branch_concentration",
    "check_estimator",
    "compute_advantages",
    "entropy_balanced_advantages",
    "premonitor_initial_samples",
    "register_estimator",
    "tree_grpo_advantages",
    "tree_roots",
    "verl_group_normalize",
    "aggregate_loss",
    "combine_loss_outputs",
    "entropy_delta",
    "first_model_tokens",
    "global_mean",
    "group_mean_and_std",
    "grpo_advantages",
    "hard_token_advantages",
    "kl_penalty",
    "masked_whiten",
    "mean_entropy",
    "node_reduce",
    "paper_branch_decisions",
    "paper_branch_probability",
    "policy_loss",
    "ppo_clipped_token_loss",
    "reinforce_pp_token_advantages",
    "release_branch_decisions",
    "release_branch_probability",
    "release_entropy",
    "soft_token_advantages",
    "summarize_loss_output",
    "token_logprobs_and_entropy",
    "token_multiplicity",
    "token_owner",
    "validate_tree",
]
