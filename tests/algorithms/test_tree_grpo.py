"""Tree-GRPO advantages (BEYOND.md §2.4) against numpy references on hand-built and random
forests, and the step-level preference form of intra-tree GRPO (§2.5) on per-token gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.algorithms import estimators as est
from arpo_jax.algorithms import losses, tree
from arpo_jax.algorithms.tree_grpo import tree_grpo_advantages
from tests.algorithms.forests import random_forest

EPS = 1e-6


def np_group_norm(x, ids, eps=EPS):
    """verl compute_grpo_outcome_advantage: size 1 -> mean 0, std 1; torch.std (ddof 1)."""
    out = np.zeros(len(x), np.float64)
    for g in np.unique(ids):
        sel = ids == g
        v = x[sel].astype(np.float64)
        mean, std = (0.0, 1.0) if len(v) == 1 else (v.mean(), v.std(ddof=1))
        out[sel] = (v - mean) / (std + eps)
    return out


def np_roots(parent):
    roots = []
    for b in range(len(parent)):
        while parent[b] >= 0:
            b = parent[b]
        roots.append(b)
    return np.asarray(roots)


def np_tree_grpo(rewards, groups, trees, mode):
    if mode == "tree":
        return np_group_norm(rewards, trees) + np_group_norm(rewards, groups)
    if mode == "tree_inner":
        return np_group_norm(rewards, trees)
    return np_group_norm(np_group_norm(rewards, groups), trees)


def test_worked_example_k3():
    a = tree_grpo_advantages(jnp.array([1.0, 0.0, 0.0]), jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32),
                             mode="tree_inner")
    np.testing.assert_allclose(a, [1.1547, -0.57735, -0.57735], atol=1e-4)


# Two prompts. Prompt 0: tree of root 0 = {0, 1, 2 (from 1)}, tree of root 3 = {3, 5}.
# Prompt 1: tree of root 4 = {4, 6}, singleton tree of root 7.
PARENT = np.array([-1, 0, 1, -1, -1, 3, 4, -1])
GROUPS = np.array([0, 0, 0, 0, 1, 0, 1, 1])
REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.5, 0.0], np.float32)


def test_tree_ids_are_the_root_samples():
    np.testing.assert_array_equal(tree.tree_roots(jnp.asarray(PARENT)), [0, 0, 0, 3, 4, 3, 4, 7])
    for seed in range(4):
        x = random_forest(np.random.default_rng(seed), num_prompts=4, per_prompt=7)
        np.testing.assert_array_equal(tree.tree_roots(jnp.asarray(x.parent)), np_roots(x.parent))


def test_hand_forest_by_value():
    a = np.asarray(tree_grpo_advantages(jnp.asarray(REWARDS), jnp.asarray(GROUPS), tree.tree_roots(PARENT)))
    intra0 = np.array([2.0, -1.0, -1.0]) / np.sqrt(1.0 / 3.0) / 3.0  # (1, 0, 0): ±, std sqrt(1/3)
    inter0 = (np.array([1.0, 0.0, 0.0, 1.0, 1.0]) - 0.6) / (np.sqrt(0.3) + EPS)  # prompt 0: {0,1,2,3,5}
    np.testing.assert_allclose(a[[0, 1, 2]], intra0 + inter0[:3], rtol=1e-5)
    np.testing.assert_allclose(a[[3, 5]], 0.0 + inter0[3:], rtol=1e-5)  # tree {3, 5}: equal rewards -> 0
    inter1 = (np.array([0.5, 0.5, 0.0]) - 1 / 3) / np.std([0.5, 0.5, 0.0], ddof=1)
    np.testing.assert_allclose(a[[4, 6]], inter1[:2], rtol=1e-5)  # tree {4, 6}: equal -> intra 0
    np.testing.assert_allclose(a[7], 0.0 / (1 + EPS) + inter1[2], rtol=1e-5)  # singleton tree: r / (1 + eps)


@pytest.mark.parametrize("mode", ["tree", "tree_inner", "tree_2norm"])
@pytest.mark.parametrize("seed", range(5))
def test_random_forests_match_numpy(mode, seed):
    x = random_forest(np.random.default_rng(seed), num_prompts=4, per_prompt=6)
    out = est.compute_advantages(mode, x)
    ref = np_tree_grpo(x.rewards, x.groups, np_roots(x.parent), mode)
    np.testing.assert_allclose(out.sequence, ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(out.tokens, ref[:, None] * x.mask, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(out.weights, x.mask)


def test_explicit_tree_ids_override_the_parents():
    x = random_forest(np.random.default_rng(9))
    ids = np.arange(len(x.rewards)) % 2 + 10 * x.groups
    out = est.compute_advantages("tree", x._replace(tree_ids=ids))
    np.testing.assert_allclose(out.sequence, np_tree_grpo(x.rewards, x.groups, ids, "tree"), rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- §2.5

def _tree_policy_grads(parent, branch_pos, tokens, T, V=5):
    """Per-leaf log-probs of a tabular policy whose context is the token node (owner, t): the
    copies of a shared prefix token are one token in one context. ``tokens`` [K, T] are taken
    from each node's owner. Returns (theta, logp(theta) -> [K, T], owner)."""
    owner = np.asarray(tree.token_owner(jnp.asarray(parent), jnp.asarray(branch_pos), T))
    node = owner * T + np.arange(T)[None, :]  # [K, T] node id
    tokens = jnp.asarray(np.asarray(tokens)[owner, np.arange(T)[None, :]])  # a shared node has one token
    theta = jax.random.normal(jax.random.PRNGKey(0), (len(parent) * T, V))

    def logp(th):
        return jnp.take_along_axis(jax.nn.log_softmax(th[node], -1), tokens[..., None], -1)[..., 0]

    return theta, logp, owner


@pytest.mark.parametrize("rewards", [[1.0, 0.0, 0.0, 1.0, 0.0], [0.7, 0.1, 0.4, 1.0, -0.5]])
def test_intra_tree_grpo_is_a_sum_of_step_level_preferences(rewards):
    # one tree of K = 5 leaves: 1 forks from 0 at 3, 2 from 0 at 6, 3 from 1 at 5, 4 from 3 at 7
    parent, branch_pos, T = np.array([-1, 0, 0, 1, 3]), np.array([0, 3, 6, 5, 7]), 10
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 5, (5, T)))
    theta, logp, owner = _tree_policy_grads(parent, branch_pos, tokens, T)
    r = np.asarray(rewards, np.float32)
    K = len(r)
    a = np.asarray(est.compute_advantages("tree_inner", est.AdvantageInputs(
        r, np.zeros(K, np.int32), parent, branch_pos, np.ones((K, T), np.int32))).sequence)
    s = np.std(r, ddof=1)
    np.testing.assert_allclose(a, (r - r.mean()) / (s + EPS), rtol=1e-5)

    # the policy loss (ratio 1, token sums, mean over sequences): grad = -(1/K) Σ_i A_i g_i
    def loss(th):
        lp = logp(th)
        cfg = losses.PolicyLossConfig(loss_agg_mode="seq-mean-token-sum")
        out = losses.policy_loss(lp, lp, jnp.asarray(a)[:, None] * jnp.ones((K, T)), jnp.ones((K, T)), cfg)
        return out.loss_sum / out.denominator

    g_loss = -K * jax.grad(loss)(theta) * (s + EPS)  # = Σ_i (r_i - r̄) g_i
    g = [jax.grad(lambda th, i=i: logp(th)[i].sum())(theta) for i in range(K)]  # full-sequence gradients
    pairs = sum((r[i] - r[j]) * (g[i] - g[j]) for i, j in itertools.product(range(K), repeat=2)) / (2 * K)
    np.testing.assert_allclose(g_loss, pairs, atol=1e-5)
    for i, j in itertools.combinations(range(K), 2):  # tokens before the fork cancel in every pair
        fork = int(np.argmax(owner[i] != owner[j]))
        after = jax.grad(lambda th: logp(th)[i, fork:].sum() - logp(th)[j, fork:].sum())(theta)
        assert fork > 0 and np.abs(g[i] - g[j] - after).max() < 1e-6
    if set(rewards) == {0.0, 1.0}:  # binary: (1/(sK)) Σ_{w ∈ win, l ∈ lose} (g_w - g_l)
        win, lose = [i for i in range(K) if r[i] == 1], [i for i in range(K) if r[i] == 0]
        dpo = sum(g[w] - g[lo] for w in win for lo in lose) / K
        np.testing.assert_allclose(g_loss, dpo, atol=1e-5)
