"""``rollout.policy: tree_search``: Tree-GRPO's tree-search rollout (Ji et al., arXiv 2509.21240,
§3; BEYOND.md §2.2; the release's ``search_r1/llm_agent/generation_ts.py``
``run_llm_loop_tree_search`` and ``tree_node.py`` ``get_expand_node`` / ``sample_leaf``).

Per prompt, with M = ``initial_rollouts``, N = ``tree_expansions_per_round``, L = ``tree_rounds``
and K = ``tree_keep_leaves``:

1. M chains, each the seed (root trajectory) of one tree.
2. L rounds. A round starts when all of the prompt's chains have ended. In every tree, N nodes
   are picked uniformly WITH replacement among the root and every non-leaf node (the release's
   ``random.choices``); each pick is expanded to completion as one new chain forked from that
   node: the sampler forks the slot of the trajectory that generated the node and rewinds the
   copy to the node's boundary (cache length, pending token, budget, response position;
   nothing is re-prefilled). The new chain is the source's child (``parent`` / ``branch_pos``),
   so ``tree_roots`` puts it in the source's tree and the ``tree`` estimators see it.
3. K of each tree's 1 + L·N leaves are returned (uniform without replacement; 0: all of them,
   as the released default K = 3 = 1 + L·N does); the rest are pruned, their kept descendants
   re-pointed to the nearest kept ancestor (``prune``).

A node is a model segment plus its tool call and result; its boundary is the response position
right after the result, the root's is 0 (right after the prompt). A node is non-leaf when its
chain continued after it (model tokens follow the result). Each boundary belongs to the
trajectory that generated it (the positions past its own fork), so a node shared by several
trajectories is one candidate. Every chain is one leaf: a prompt makes M·(1 + L·N) trajectories
(the engine reserves a slot for each and keeps finished trajectories' slots, and so their KV
caches, until the prompt's rounds are done: ``holds_finished``). All draws come from the
prompt's stream, so the trees are a function of (params, prompt, seed).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from arpo_jax.rollout.policies.base import BranchingPolicy, register
from arpo_jax.rollout.trajectory import Trajectory


def tree_leaves(cfg) -> int:
    """Leaves (chains) one tree grows: 1 + L·N."""
    return 1 + cfg.tree_rounds * cfg.tree_expansions_per_round


def node_boundaries(traj: Trajectory) -> list[int]:
    """Response positions of ``traj``'s own non-leaf node boundaries: the ends of its tool
    results past its fork after which it went on generating."""
    return [e for _, e in traj.obs_spans if traj.branch_pos < e < len(traj.tokens)]


def trees_of(trajs: Sequence[Trajectory]) -> list[list[Trajectory]]:
    """One prompt's trajectories grouped by tree (the root trajectory they descend from), trees
    in root creation order, each in creation order."""
    by_uid = {t.uid: t for t in trajs}
    trees: dict[int, list[Trajectory]] = {}
    for t in trajs:
        root = t
        while root.parent >= 0:
            root = by_uid[root.parent]
        trees.setdefault(root.uid, []).append(t)
    return list(trees.values())


def prune(trajs: Sequence[Trajectory], keep: set[int]) -> list[Trajectory]:
    """The trajectories whose uid is in ``keep`` (creation order), each re-pointed to its nearest
    kept ancestor with the prefix it shares with it (the minimum fork position on the way up).
    A tree whose root is pruned gets its first kept trajectory as the new root; the tree's other
    orphans become its children (sharing what both share with the old root). Modifies the kept
    trajectories' ``parent``, ``branch_pos`` and ``depth`` in place."""
    by_uid = {t.uid: t for t in trajs}
    kept = [t for t in trajs if t.uid in keep]
    stand_in: dict[int, tuple[int, int]] = {}  # pruned root uid -> (new root uid, its prefix shared with it)
    for t in kept:  # creation order: a kept ancestor is re-pointed before its descendants
        bp, a = t.branch_pos, t.parent
        while a >= 0 and a not in keep and by_uid[a].parent >= 0:
            bp, a = min(bp, by_uid[a].branch_pos), by_uid[a].parent
        if a >= 0 and a not in keep:  # the tree's root is pruned
            if a not in stand_in:
                stand_in[a] = (t.uid, bp)
                a, bp = -1, 0
            else:
                a, bp = stand_in[a][0], min(bp, stand_in[a][1])
        t.parent, t.branch_pos = a, (bp if a >= 0 else 0)
        t.depth = by_uid[a].depth + 1 if a >= 0 else 0
    return kept


@register("tree_search")
class TreeSearchPolicy(BranchingPolicy):
    """Tree-GRPO: M chains, L rounds of N uniform expansions per tree, K leaves kept per tree."""

    holds_finished = True

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.initial_rollouts < 1:
            raise ValueError(f"rollout.initial_rollouts (M trees) must be >= 1, got {cfg.initial_rollouts}")
        if cfg.tree_rounds < 0:
            raise ValueError(f"rollout.tree_rounds must be >= 0, got {cfg.tree_rounds}")
        if cfg.tree_expansions_per_round < 1:
            raise ValueError(f"rollout.tree_expansions_per_round must be >= 1, got {cfg.tree_expansions_per_round}")
        leaves = tree_leaves(cfg)
        if not 0 <= cfg.tree_keep_leaves <= leaves:
            raise ValueError(f"rollout.tree_keep_leaves must be in [0, 1 + tree_rounds·tree_expansions_per_round = "
                             f"{leaves}], got {cfg.tree_keep_leaves}")
        returned = cfg.initial_rollouts * (cfg.tree_keep_leaves or leaves)
        if cfg.total_rollouts != returned:
            raise ValueError(f"rollout.total_rollouts must be initial_rollouts × (tree_keep_leaves or 1 + "
                             f"tree_rounds·tree_expansions_per_round) = {returned} for policy 'tree_search', "
                             f"got {cfg.total_rollouts}")

    @property
    def budget(self) -> int:
        return self.cfg.initial_rollouts * tree_leaves(self.cfg)  # M·(1 + L·N) chains

    @property
    def initial_samples(self) -> int:
        return self.cfg.initial_rollouts

    def candidates(self, tree: Sequence[Trajectory]) -> list[tuple[Trajectory, int]]:
        """A tree's expansion points: its root (position 0 of the root trajectory), then every
        trajectory's own non-leaf node boundaries (creation order, positions ascending)."""
        return [(tree[0], 0)] + [(t, e) for t in tree for e in node_boundaries(t)]

    def expand(self, trajs: list[Trajectory], rng: np.random.Generator) -> list[tuple[Trajectory, int]]:
        """One round: N picks per tree, uniform with replacement, trees in root order."""
        picks = []
        for tree in trees_of(trajs):
            cand = self.candidates(tree)
            picks += [cand[i] for i in rng.integers(0, len(cand), size=self.cfg.tree_expansions_per_round)]
        return picks

    def select(self, trajs: list[Trajectory], rng: np.random.Generator) -> list[Trajectory]:
        """K leaves per tree, uniform without replacement (K 0 or all: every leaf, no draw)."""
        k = self.cfg.tree_keep_leaves
        trees = trees_of(trajs)
        if not k or all(len(tree) <= k for tree in trees):
            return trajs
        keep = set()
        for tree in trees:
            chosen = rng.choice(len(tree), size=min(k, len(tree)), replace=False)
            keep.update(tree[int(i)].uid for i in chosen)
        return prune(trajs, keep)
