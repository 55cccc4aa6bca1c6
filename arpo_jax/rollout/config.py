"""``RolloutConfig``: how trajectories are generated (policy, budgets, branching knobs): the
one ``rollout:`` config section. The policies that read the knobs: ``arpo_jax.rollout.policies``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from arpo_jax.algorithms.branching import ENTROPY_NORMALIZATIONS
from arpo_jax.rollout.policies import POLICIES
from arpo_jax.rollout.policies.aepo import AepoOptions


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Rollout policy and limits. Defaults are the paper runs (DESIGN.md §2).

    policy: the branching policy, a name in ``arpo_jax.rollout.policies.POLICIES``:
      "trajectory" (GRPO: M independent samples per prompt), "arpo" (the paper's
      entropy-based adaptive rollout: N initial samples, k look-ahead tokens after each tool
      result, P = α + β·ΔH, fork Z branches from the post-observation state while the prompt
      has fewer than M, parallel refill) or "arpo_release" (the released code's rule: top-k
      entropy of the segment that ended with the tool call, branch iff clip(U − β·ΔH) <= τ,
      serial refill), "aepo" (AEPO) or "tree_search" (Tree-GRPO). docs/branching.md.
    total_rollouts (M), initial_rollouts (N), branches_per_source (Z), threshold (τ),
      entropy_weight (β), base_probability (α), entropy_tokens (k), entropy_topk (release
      entropy: top-k log-probs per token).
    paper_decision: "threshold" (branch iff P > τ, as the paper states) or "stochastic"
      (branch with probability P).
    entropy_normalization: ΔH normalisation for "arpo" ("none", "log_vocab", "initial");
      "arpo_release" always uses its own (entropies already divided by ln|V|).
    stale_entropy_baseline: "arpo_release" only: reproduce the release's bug, an H_initial
      table keyed by slot index and never reset between steps.
    max_response_tokens: per-trajectory budget; tool-result tokens count against it.
    max_tool_calls: calls per trajectory; a further call ends the trajectory
      (``tool_limit_action`` "eos": append EOS as the release does, the format check then
      fails; "stop": end it as it stands).
    max_prompt_tokens: longer prompts are cut from the left (counted in the metrics).
    num_slots: sampler slots (0: prompts per step × M); in multi-host training, the slots of
      all processes together (each samples with num_slots / processes). A prompt is admitted
      only with M slots reserved for it (>= M per process). capacity: tokens per slot (0:
      max_prompt_tokens + max_response_tokens + 1).
    kv_layout: "paged" (a pool of ``kv_pages`` pages of ``page_size`` tokens; forks share
      pages; slots are bookkeeping and memory is the limit: prompts are admitted, paused and
      evicted by pages, with exactly the same trajectories) or "contiguous" (a ``capacity``
      row per slot: slots are the limit). kv_pages: pages per process (0: enough for every
      prompt × M at full length).
    temperature / top_p / top_k: sampling (paper: 1.0 / 1.0 / off); greedy for validation.
    chunk_size: tokens decoded per device call between host decisions.
    deterministic: a tool result is appended exactly one decode chunk after its call was
      submitted (waiting for it then if needed), so a rollout depends only on (params,
      prompts, seed) — required for exact resume. False: results are appended as soon as they
      arrive (more overlap when tools are slow; timing-dependent).
    tree_expansions_per_round (N), tree_rounds (L), tree_keep_leaves (K, 0: all): policy
      "tree_search" (Tree-GRPO): ``initial_rollouts`` trees, L rounds of N expansions per tree,
      K leaves kept per tree; total_rollouts must be initial_rollouts × (K or 1 + L·N).
    aepo: AEPO's own knobs (``AepoOptions``: penalty slope, counter scope, pre-monitoring);
      read by policy "aepo" (docs/beyond.md).
    """

    policy: str = "arpo"
    total_rollouts: int = 16
    initial_rollouts: int = 8
    branches_per_source: int = 1
    threshold: float = 0.5
    entropy_weight: float = 0.2
    base_probability: float = 0.5
    entropy_tokens: int = 20
    entropy_topk: int = 10
    paper_decision: Literal["threshold", "stochastic"] = "threshold"
    entropy_normalization: Literal["none", "log_vocab", "initial"] = "none"
    stale_entropy_baseline: bool = False
    max_response_tokens: int = 4096
    max_tool_calls: int = 3
    tool_limit_action: Literal["eos", "stop"] = "eos"
    max_prompt_tokens: int = 1536
    num_slots: int = 0
    capacity: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    chunk_size: int = 32
    deterministic: bool = True
    kv_layout: Literal["contiguous", "paged"] = "contiguous"
    page_size: int = 16
    kv_pages: int = 0
    tree_expansions_per_round: int = 2
    tree_rounds: int = 1
    tree_keep_leaves: int = 0
    aepo: AepoOptions = dataclasses.field(default_factory=AepoOptions)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"rollout.policy must be one of {tuple(POLICIES)}, got {self.policy!r}")
        if self.total_rollouts < 1:
            raise ValueError(f"rollout.total_rollouts must be >= 1, got {self.total_rollouts}")
        if self.max_response_tokens < 1 or self.max_prompt_tokens < 1 or self.max_tool_calls < 0:
            raise ValueError("rollout.max_response_tokens and max_prompt_tokens must be >= 1, max_tool_calls >= 0")
        if self.branches_per_source < 0 or self.entropy_tokens < 1 or self.entropy_topk < 1:
            raise ValueError("rollout.branches_per_source must be >= 0, entropy_tokens and entropy_topk >= 1")
        if self.entropy_normalization not in ENTROPY_NORMALIZATIONS:
            raise ValueError(f"rollout.entropy_normalization must be one of {ENTROPY_NORMALIZATIONS}, "
                             f"got {self.entropy_normalization!r}")
        if self.kv_layout not in ("contiguous", "paged"):
            raise ValueError(f"rollout.kv_layout must be 'contiguous' or 'paged', got {self.kv_layout!r}")
        if self.page_size < 1 or self.kv_pages < 0:
            raise ValueError(f"rollout.page_size must be >= 1 and kv_pages >= 0, got {self.page_size}, {self.kv_pages}")
        POLICIES[self.policy].check_config(self)

    @property
    def slot_capacity(self) -> int:
        return self.capacity or self.max_prompt_tokens + self.max_response_tokens + 1
