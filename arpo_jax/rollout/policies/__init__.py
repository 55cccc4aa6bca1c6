"""Branching policies by name (``rollout.policy``): ``POLICIES`` maps each name to its class.

* ``trajectory``: M independent samples per prompt (GRPO).
* ``arpo``: the paper's entropy-based adaptive rollout.
* ``arpo_release``: the same as the authors' released code runs it.
* ``aepo``: AEPO (the release's rule with a consecutive-branch penalty, entropy pre-monitoring).
* ``tree_search``: Tree-GRPO's tree search (M chains, L rounds of N uniform node expansions per tree).

``base``: the hooks the engine calls and the ``register`` decorator; docs/branching.md. A new
policy is one module here plus its import below.
"""

from arpo_jax.rollout.policies.base import POLICIES, BranchingPolicy, make_policy, register
from arpo_jax.rollout.policies import aepo, arpo, arpo_release, trajectory, tree_search  # noqa: F401  (registers them)

__all__ = ["POLICIES", "BranchingPolicy", "make_policy", "register"]
