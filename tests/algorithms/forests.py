"""Random rollout forests for the estimator tests (numpy; no rollout imports)."""

import numpy as np

from arpo_jax.algorithms import estimators as est


def random_forest(rng, num_prompts=3, per_prompt=5, T=12):
    """A random batch: per prompt one or two roots, the rest forked from an earlier trajectory
    of the same prompt at a position <= both lengths; interleaved prompt order."""
    parent, branch_pos, groups, lengths = [], [], [], []
    for g in range(num_prompts):
        start = len(parent)
        for i in range(per_prompt):
            n = int(rng.integers(3, T + 1))
            if i < 1 + (g % 2) or rng.random() < 0.2:
                parent.append(-1)
                branch_pos.append(0)
            else:
                p = int(rng.integers(start, len(parent)))
                parent.append(p)
                branch_pos.append(int(rng.integers(1, min(n, lengths[p]) + 1)))
            groups.append(g)
            lengths.append(n)
    order = rng.permutation(len(parent))  # interleave; remap parents
    inv = np.argsort(order)
    parent = np.asarray([inv[parent[o]] if parent[o] >= 0 else -1 for o in order])
    mask = (np.arange(T)[None, :] < np.asarray(lengths)[order][:, None]).astype(np.int32)
    mask[:, 1::4] = 0  # some tool-result tokens
    rewards = rng.choice([-1.0, 0.0, 0.5, 1.0], size=len(order)).astype(np.float32)
    return est.AdvantageInputs(rewards, np.asarray(groups)[order], parent, np.asarray(branch_pos)[order], mask)
