"""Soft and hard advantage attribution on rollout trees (hand-built trees + simulated rollouts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arpo_jax.algorithms import advantages as adv
from arpo_jax.algorithms import losses, tree

# Tree 1 (T = 8), one prompt, plus an unrelated root of another prompt:
#   traj 0: root, 8 tokens                      a0 a0 a0 a0 a0 a0 a0 a0
#   traj 1: forks from 0 at 3, 6 tokens         .  .  .  b1 b1 b1
#   traj 2: forks from 0 at 5, 8 tokens         .  .  .  .  .  c2 c2 c2
#   traj 3: forks from 1 at 4, 7 tokens         .  .  .  (b1) d3 d3 d3
#   traj 4: root of another prompt, 8 tokens
PARENT = np.array([-1, 0, 0, 1, -1])
BRANCH_POS = np.array([0, 3, 5, 4, 0])
LENGTHS = np.array([8, 6, 8, 7, 8])
T = 8
A = np.array([1.0, -2.0, 4.0, 0.5, 3.0])  # sequence advantages


def length_mask(lengths, T):
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


def test_owner_and_multiplicity_by_hand():
    owner = tree.token_owner(jnp.asarray(PARENT), jnp.asarray(BRANCH_POS), T)
    expected_owner = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 2, 2, 2],
            [0, 0, 0, 1, 3, 3, 3, 3],
            [4, 4, 4, 4, 4, 4, 4, 4],
        ]
    )
    np.testing.assert_array_equal(owner, expected_owner)
    mult = tree.token_multiplicity(jnp.asarray(PARENT), jnp.asarray(BRANCH_POS), T)
    expected_mult = np.array(
        [
            [4, 4, 4, 2, 2, 1, 1, 1],
            [4, 4, 4, 2, 1, 1, 1, 1],
            [4, 4, 4, 2, 2, 1, 1, 1],
            [4, 4, 4, 2, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
        ]
    )
    np.testing.assert_array_equal(mult, expected_mult)


def test_hard_attribution_by_hand():
    mask = length_mask(LENGTHS, T)
    got_adv, got_w = adv.hard_token_advantages(*map(jnp.asarray, (A, PARENT, BRANCH_POS, mask)))
    m0123 = (1.0 - 2.0 + 4.0 + 0.5) / 4  # tokens 0-2: in all of 0..3  -> 0.875
    m02 = (1.0 + 4.0) / 2  # tokens 3-4 of 0 and 2                      -> 2.5
    m13 = (-2.0 + 0.5) / 2  # token 3 of 1 and 3                         -> -0.75
    expected = np.array(
        [
            [m0123] * 3 + [m02, m02, 1.0, 1.0, 1.0],
            [m0123] * 3 + [m13, -2.0, -2.0, 0.0, 0.0],
            [m0123] * 3 + [m02, m02, 4.0, 4.0, 4.0],
            [m0123] * 3 + [m13, 0.5, 0.5, 0.5, 0.0],
            [3.0] * 8,
        ]
    )
    np.testing.assert_allclose(got_adv, expected, rtol=1e-6)
    expected_w = np.array(
        [
            [0.25] * 3 + [0.5, 0.5, 1, 1, 1],
            [0.25] * 3 + [0.5, 1, 1, 0, 0],
            [0.25] * 3 + [0.5, 0.5, 1, 1, 1],
            [0.25] * 3 + [0.5, 1, 1, 1, 0],
            [1.0] * 8,
        ]
    )
    np.testing.assert_allclose(got_w, expected_w, rtol=1e-6)
    # Distinct model tokens: 3 shared + (0,2 share 3-4: 2) + (1,3 share 3: 1) + own tokens
    # 0: 3, 1: 2, 2: 3, 3: 3, 4: 8  ->  3 + 2 + 1 + 3 + 2 + 3 + 3 + 8 = 25
    assert float(got_w.sum()) == pytest.approx(25.0)


def test_fork_before_parents_fork_point_shares_with_grandparent():
    # traj 2 forks from traj 1 at position 2, before traj 1's own fork point (4) from traj 0.
    parent, branch_pos = jnp.array([-1, 0, 1]), jnp.array([0, 4, 2])
    owner = tree.token_owner(parent, branch_pos, 6)
    np.testing.assert_array_equal(owner, [[0] * 6, [0, 0, 0, 0, 1, 1], [0, 0, 2, 2, 2, 2]])
    a, _ = adv.hard_token_advantages(jnp.array([3.0, 0.0, -3.0]), parent, branch_pos, jnp.ones((3, 6)))
    np.testing.assert_allclose(a[:, :2], 0.0, atol=1e-6)  # mean of (3, 0, -3)
    np.testing.assert_allclose(a[0, 2:4], 1.5)  # tokens 2-3 shared by 0 and 1 only


def test_children_listed_before_parents_and_jit():
    # Same tree as TREE 1 under the permutation [3, 1, 4, 0, 2] (child first).
    perm = np.array([3, 1, 4, 0, 2])
    inv = np.argsort(perm)
    parent = np.where(PARENT[perm] >= 0, inv[np.maximum(PARENT[perm], 0)], -1)
    mask = length_mask(LENGTHS, T)
    f = jax.jit(adv.hard_token_advantages)
    a_perm, w_perm = f(*map(jnp.asarray, (A[perm], parent, BRANCH_POS[perm], mask[perm])))
    a, w = f(jnp.asarray(A), jnp.asarray(PARENT), jnp.asarray(BRANCH_POS), jnp.asarray(mask))
    np.testing.assert_allclose(a_perm, np.asarray(a)[perm], rtol=1e-6)
    np.testing.assert_allclose(w_perm, np.asarray(w)[perm], rtol=1e-6)


# ------------------------------------------------------------- simulated rollouts (reference)


@st.composite
def forests(draw, max_trajectories=7, num_tokens=10):
    """A rollout simulation: every generated token gets a fresh label, forks copy labels."""
    B = draw(st.integers(1, max_trajectories))
    parent, branch_pos, labels, next_label = [], [], [], 0
    for i in range(B):
        p = draw(st.integers(-1, i - 1))
        bp = 0 if p < 0 else draw(st.integers(0, len(labels[p])))
        length = draw(st.integers(max(bp, 1), num_tokens))
        own = list(range(next_label, next_label + length - bp))
        next_label += length - bp
        labels.append((labels[p][:bp] if p >= 0 else []) + own)
        parent.append(p)
        branch_pos.append(bp)
    model_label = draw(st.lists(st.booleans(), min_size=next_label, max_size=next_label))  # tool vs model
    rewards = draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), min_size=B, max_size=B))
    perm = draw(st.permutations(list(range(B))))
    # Present the batch in a random order (children may come before parents).
    inv = np.argsort(perm)
    label_arr = np.full((B, num_tokens), -1)
    for k, old in enumerate(perm):
        label_arr[k, : len(labels[old])] = labels[old]
    parent_arr = np.array([inv[parent[old]] if parent[old] >= 0 else -1 for old in perm])
    bp_arr = np.array([branch_pos[old] for old in perm])
    mask = np.where(label_arr >= 0, np.array(model_label + [False])[label_arr], False).astype(np.float32)
    # Pad to a fixed batch with empty roots of their own groups (one jit compile for all examples).
    pad = max_trajectories - B
    group_ids = np.concatenate([np.zeros(B, np.int32), np.arange(1, pad + 1, dtype=np.int32)])
    return (
        np.concatenate([parent_arr, -np.ones(pad, np.int64)]),
        np.concatenate([bp_arr, np.zeros(pad, np.int64)]),
        np.concatenate([label_arr, -np.ones((pad, num_tokens), np.int64)]),
        np.concatenate([mask, np.zeros((pad, num_tokens), np.float32)]),
        np.concatenate([np.array(rewards)[perm], np.zeros(pad)]),
        group_ids,
    )


_grpo_jit = jax.jit(adv.grpo_advantages)
_hard_jit = jax.jit(adv.hard_token_advantages)


def reference_hard(seq_adv, label_arr, mask):
    """Per-label mean of the advantages of the trajectories holding that label; weight 1/count."""
    out_adv, out_w = np.zeros(label_arr.shape), np.zeros(label_arr.shape)
    for lab in np.unique(label_arr[label_arr >= 0]):
        rows, cols = np.nonzero(label_arr == lab)
        out_adv[rows, cols] = seq_adv[rows].mean()
        out_w[rows, cols] = 1.0 / len(rows)
    return out_adv * mask, out_w * mask


@settings(max_examples=30, deadline=None)
@given(forests())
def test_hard_attribution_matches_simulated_rollout_and_conserves(forest):
    parent, branch_pos, labels, mask, rewards, group_ids = forest
    tree.validate_tree(parent, branch_pos, group_ids=group_ids, lengths=(labels >= 0).sum(1))
    seq_adv = np.asarray(_grpo_jit(jnp.asarray(rewards), jnp.asarray(group_ids)))
    got_adv, got_w = _hard_jit(jnp.asarray(seq_adv), jnp.asarray(parent), jnp.asarray(branch_pos), jnp.asarray(mask))
    ref_adv, ref_w = reference_hard(seq_adv.astype(np.float64), labels, mask)
    np.testing.assert_allclose(got_adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_w, ref_w, rtol=1e-6, atol=1e-7)
    soft = np.asarray(adv.soft_token_advantages(jnp.asarray(seq_adv), jnp.asarray(mask)))
    # Conservation: per node, hard and soft advantages have the same sum over the copies ...
    for lab in np.unique(labels[labels >= 0]):
        node = labels == lab
        assert np.asarray(got_adv)[node].sum() == pytest.approx(soft[node].sum(), abs=1e-4)
    # ... so the totals agree, and the weights count each distinct model token once.
    assert float(np.sum(got_adv)) == pytest.approx(float(soft.sum()), abs=1e-4)
    assert float(np.sum(got_w)) == pytest.approx(len(np.unique(labels[mask > 0])), abs=1e-4)


def test_soft_attribution_equals_grpo_on_duplicated_sequences():
    """Soft attribution on the tree == GRPO per token on the materialised (duplicated) sequences."""
    rng = np.random.default_rng(3)
    rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.5])
    group_ids = np.array([0, 0, 0, 0, 1])
    mask = length_mask(LENGTHS, T)
    # Materialise every trajectory as its own full token sequence (shared prefixes copied).
    tokens = np.zeros((5, T), np.int64)
    for b in [0, 4, 1, 2, 3]:  # parents first
        if PARENT[b] >= 0:
            tokens[b, : BRANCH_POS[b]] = tokens[PARENT[b], : BRANCH_POS[b]]
        tokens[b, BRANCH_POS[b] :] = rng.integers(0, 100, T - BRANCH_POS[b])
    seq_adv = adv.grpo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids))
    soft = adv.soft_token_advantages(seq_adv, jnp.asarray(mask))
    grpo_per_token = np.zeros((5, T))
    for g in np.unique(group_ids):  # plain GRPO, one independent sequence per row
        idx = np.flatnonzero(group_ids == g)
        r = rewards[idx]
        a = (r - r.mean()) / (r.std(ddof=1) + 1e-6) if len(idx) > 1 else np.zeros(1)
        grpo_per_token[idx] = a[:, None] * mask[idx]
    np.testing.assert_allclose(soft, grpo_per_token, rtol=1e-5, atol=1e-6)
    # A shared token's total weight in the soft loss is the sum over its copies.
    assert np.all(tokens[:4, :3] == tokens[0, :3])
    np.testing.assert_allclose(np.asarray(soft)[:4, 0].sum(), grpo_per_token[:4, 0].sum(), atol=1e-6)


def test_hard_weights_make_policy_loss_count_shared_tokens_once():
    """Loss over the tree with 1/multiplicity weights == token-mean loss over distinct nodes."""
    rng = np.random.default_rng(4)
    mask = length_mask(LENGTHS, T)
    owner = np.asarray(tree.token_owner(jnp.asarray(PARENT), jnp.asarray(BRANCH_POS), T))
    node_lp = rng.normal(-1.0, 0.5, (5, T))  # one value per node (owner, t)
    node_old = node_lp + rng.normal(0, 0.3, (5, T))
    t_idx = np.broadcast_to(np.arange(T), (5, T))
    logp, old = node_lp[owner, t_idx], node_old[owner, t_idx]  # copies share log-probs
    a, w = adv.hard_token_advantages(jnp.asarray(A), jnp.asarray(PARENT), jnp.asarray(BRANCH_POS), jnp.asarray(mask))
    cfg = losses.PolicyLossConfig()
    out = losses.policy_loss(jnp.asarray(logp), jnp.asarray(old), a, jnp.asarray(mask), cfg, token_weights=w)
    # Distinct nodes: (owner, t) pairs present in the mask.
    nodes = sorted({(owner[b, t], t) for b in range(5) for t in range(T) if mask[b, t]})
    a_np = np.asarray(a)
    node_adv = {(owner[b, t], t): a_np[b, t] for b in range(5) for t in range(T) if mask[b, t]}
    per_node = []
    for o, t in nodes:
        r = np.exp(node_lp[o, t] - node_old[o, t])
        adv_ = node_adv[(o, t)]
        l = max(-adv_ * r, -adv_ * np.clip(r, 0.8, 1.2))
        per_node.append(min(l, -adv_ * 3.0) if adv_ < 0 else l)
    assert float(out.denominator) == pytest.approx(len(nodes), rel=1e-6)
    assert float(out.loss_sum / out.denominator) == pytest.approx(np.mean(per_node), rel=1e-5)


@pytest.mark.parametrize(
    "parent, branch_pos, kwargs, message",
    [
        ([-1, 5], [0, 1], {}, "parent 5"),
        ([-1, 1], [0, 1], {}, "parent 1"),
        ([-1, 0], [2, 1], {}, "root must have branch_pos 0"),
        ([2, 2, 1], [1, 1, 1], {}, "cycle"),
        ([-1, 0], [0, 1], {"group_ids": np.array([0, 1])}, "another group"),
        ([-1, 0], [0, 5], {"lengths": np.array([4, 6])}, "exceeds"),
    ],
)
def test_validate_tree_rejects_bad_forests(parent, branch_pos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tree.validate_tree(np.array(parent), np.array(branch_pos), **kwargs)
