"""Synthetic ARPO-shaped rollout trees for the packing and packed-update tests.

Each prompt gets ``m`` trajectories: ``roots`` global samples, the rest forked from a random
earlier trajectory of the prompt at a random response position (inheriting its prefix, as
``Trajectory.branch``), with random own tokens after it, and tool-result spans (mask 0).
"""

import numpy as np

from arpo_jax.algorithms.packing import Forest


def arpo_forest(rng: np.random.Generator, prompts: int = 3, m: int = 6, roots: int = 2, prompt_len=(5, 12),
                response_len=(1, 20), vocab: int = 60) -> tuple[Forest, np.ndarray]:
    """(Forest, response loss mask [B, Tr]) of ``prompts`` ARPO-shaped trees of ``m`` trajectories."""
    rows, p_len, parent, branch_pos, group, masks = [], [], [], [], [], []
    prompt_rows = []
    for g in range(prompts):
        prompt = rng.integers(0, vocab, int(rng.integers(*prompt_len)))
        base = len(rows)
        for j in range(m):
            own = rng.integers(0, vocab, int(rng.integers(*response_len)))
            mask = np.ones(len(own), np.int32)
            if j < roots:
                par, pos, seq, prefix_mask = -1, 0, own, mask
            else:
                par = base + int(rng.integers(0, j))
                pos = int(rng.integers(0, len(rows[par]) + 1))
                seq = np.concatenate([rows[par][:pos], own])
                prefix_mask = np.concatenate([masks[par][:pos], mask])
            prefix_mask = prefix_mask.copy()
            if len(seq) > 4 and rng.random() < 0.5:  # a tool result of the trajectory's own
                s = int(rng.integers(max(pos, 1), len(seq)))
                prefix_mask[s:s + 2] = 0
            rows.append(seq)
            masks.append(prefix_mask)
            parent.append(par)
            branch_pos.append(pos)
            group.append(g)
            p_len.append(len(prompt))
            prompt_rows.append(prompt)
    tr, pmax = max(len(r) for r in rows), max(p_len)
    tokens, mask = np.zeros((len(rows), max(tr, 1)), np.int32), np.zeros((len(rows), max(tr, 1)), np.int32)
    prompt = np.zeros((len(rows), pmax), np.int32)
    for i, (r, mk, pr) in enumerate(zip(rows, masks, prompt_rows)):
        tokens[i, :len(r)], mask[i, :len(r)], prompt[i, :len(pr)] = r, mk, pr
    forest = Forest(prompt, np.asarray(p_len), tokens, np.asarray([len(r) for r in rows]), np.asarray(parent),
                    np.asarray(branch_pos), np.asarray(group))
    return forest, mask
