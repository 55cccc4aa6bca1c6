"""The RL methods the demo can run, at one budget: M trajectories per prompt, the same SFT
checkpoint, optimizer and steps. Each is a rollout policy with its advantage and loss options
(``rl_config`` merges them into the demo's RL config):

* ``grpo``: M independent trajectories (``rollout.policy=trajectory``), GRPO advantages;
* ``arpo``: ARPO's entropy-based adaptive branching (N initial samples, branches after tool
  results), soft segment attribution (``arpo_soft``);
* ``aepo``: AEPO's rollout (ARPO's rule with the consecutive-branch penalty, per chain) and
  update (entropy-aware advantage over the whole batch, gradient-preserving clip);
* ``tree_grpo``: Tree-GRPO's tree search (M/2 trees, one round of one expansion each) with
  its intra-tree + inter-tree advantage (``tree``).

docs/beyond.md describes AEPO and Tree-GRPO; docs/results.md reports the comparison.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Method:
    """One RL method: a label for tables and the config sections it sets."""

    label: str
    rollout: dict[str, Any]
    algorithm: dict[str, Any]
    loss: dict[str, Any] = dataclasses.field(default_factory=dict)


def methods(total: int, initial: int) -> dict[str, Method]:
    """The methods at a budget of ``total`` trajectories per prompt (ARPO/AEPO: ``initial``
    first samples)."""
    return {
        "grpo": Method("GRPO (trajectory rollouts)", {"policy": "trajectory"}, {"advantage": "grpo"}),
        "arpo": Method("ARPO (entropy branching)", {"policy": "arpo", "initial_rollouts": initial},
                       {"advantage": "arpo_soft"}),
        "aepo": Method("AEPO (branch penalty, entropy-aware update)",
                       {"policy": "aepo", "initial_rollouts": initial, "aepo": {"consecutive_scope": "chain"}},
                       {"advantage": "arpo_soft"},
                       {"clip_mode": "gradient_preserving", "entropy_advantage": True,
                        "entropy_advantage_alpha": 0.2, "entropy_advantage_scope": "batch"}),
        "tree_grpo": Method("Tree-GRPO (tree search)",
                            {"policy": "tree_search", "initial_rollouts": total // 2, "tree_expansions_per_round": 1,
                             "tree_rounds": 1, "tree_keep_leaves": 0},
                            {"advantage": "tree"}),
    }


def method(name: str, total: int, initial: int) -> Method:
    """The method called ``name``; a one-line error naming the known ones otherwise."""
    known = methods(total, initial)
    if name not in known:
        raise ValueError(f"unknown demo method {name!r}; known: {', '.join(known)}")
    return known[name]
