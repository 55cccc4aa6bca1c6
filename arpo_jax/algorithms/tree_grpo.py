"""Tree-GRPO advantages (Ji et al., arXiv 2509.21240; BEYOND.md §2.4), as registered estimators.

Shapes: B trajectories (leaves: each is one root-to-leaf sequence), T response tokens.

Two groupings of the leaves: the prompt P(i) (all its trees) and the tree T(i). In this
engine a tree is the set of trajectories descending from one global (root) sample of the
prompt: ``tree.tree_roots(parent)``, unless the batch supplies ``tree_ids``.

* ``tree``: A = A_intra + A_inter (plain sum, no re-normalisation; the released
  ``adv_estimator: tree``), A_g = (r - mean_g r) / (std_g r + eps), unbiased std.
* ``tree_inner``: A = A_intra only.
* ``tree_2norm``: normalise per prompt, then re-normalise those values per tree.

Group statistics follow verl (``advantages.verl_group_normalize``): a group of one has mean 0
and std 1, a group of equal rewards gets 0. ``norm_by_std: false`` centres without dividing.
The sequence advantage is broadcast to the leaf's model tokens (shared prefixes count once per
leaf, as in the release, where prefixes are duplicated); weights are the loss mask.

Step-level credit (§2.5, tested): within one tree, Σ_i (r_i - r̄)·g_i equals
(1/2K)·Σ_{i,j} (r_i - r_j)·(g_i - g_j), and in each (i, j) pair the tokens before the fork
(the lowest common ancestor) cancel: intra-tree GRPO is a sum of step-level preferences.
"""

from __future__ import annotations

import jax.numpy as jnp

from arpo_jax.algorithms.advantages import verl_group_normalize
from arpo_jax.algorithms.estimators import (AdvantageInputs, AdvantageOutput, EstimatorOptions, broadcast,
                                            register_estimator, tree_ids_of)

Array = jnp.ndarray


def tree_grpo_advantages(rewards: Array, groups: Array, tree_ids: Array, *, mode: str = "tree", eps: float = 1e-6,
                         normalize_std: bool = True) -> Array:
    """Tree-GRPO sequence advantages [B].

    Args:
      rewards: [B] leaf rewards; groups: [B] prompt ids; tree_ids: [B] tree ids (unique over the
        batch, not only within a prompt).
      mode: "tree" (intra + inter), "tree_inner" (intra) or "tree_2norm" (prompt, then tree).

    Returns:
      [B] float32.
    """
    def norm(x, ids):
        return verl_group_normalize(x, ids, eps=eps, normalize_std=normalize_std)

    if mode == "tree":
        return norm(rewards, tree_ids) + norm(rewards, groups)
    if mode == "tree_inner":
        return norm(rewards, tree_ids)
    if mode == "tree_2norm":
        return norm(norm(rewards, groups), tree_ids)
    raise ValueError(f"tree_grpo mode must be 'tree', 'tree_inner' or 'tree_2norm', got {mode!r}")


def _estimator(mode: str):
    def estimate(inputs: AdvantageInputs, opt: EstimatorOptions) -> AdvantageOutput:
        seq = tree_grpo_advantages(inputs.rewards, inputs.groups, tree_ids_of(inputs), mode=mode, eps=opt.eps,
                                   normalize_std=opt.norm_by_std)
        return broadcast(seq, inputs.mask)

    estimate.__doc__ = f"Tree-GRPO ``{mode}`` advantages, broadcast to the leaf's model tokens."
    return register_estimator(mode)(estimate)


tree = _estimator("tree")
tree_inner = _estimator("tree_inner")
tree_2norm = _estimator("tree_2norm")
