"""The ``tree_search`` policy (Tree-GRPO's tree-search rollout) on the scripted tool-using model:
budgets, expansion points, no re-prefill, determinism across slots and memory, leaf
subsampling, and the ``tree`` advantage of a real tree against a numpy reference."""

import numpy as np
import pytest

from arpo_jax.algorithms.estimators import ESTIMATORS, AdvantageInputs, EstimatorOptions
from arpo_jax.algorithms.tree import validate_tree
from arpo_jax.rollout import RolloutConfig, RolloutEngine, Trajectory
from arpo_jax.rollout.policies import make_policy
from arpo_jax.rollout.policies.tree_search import node_boundaries, prune, trees_of
from arpo_jax.rollout.scheduler import worst_case_pages
from arpo_jax.rollout.trajectory import tree_arrays
from tests.rollout.scripted import prompt_ids
from tests.rollout.test_rollout import _by_prompt

M, N, L = 2, 2, 2  # 2 trees of 1 + 2·2 = 5 leaves: 10 chains per prompt
P = 4


def cfg(**kw):
    base = dict(policy="tree_search", initial_rollouts=M, tree_expansions_per_round=N, tree_rounds=L,
                total_rollouts=M * (1 + L * N), max_response_tokens=40, max_prompt_tokens=8, chunk_size=8,
                max_tool_calls=3, kv_layout="contiguous")
    return RolloutConfig(**{**base, **kw})


def engine(setup, **kw):
    tok, model, disp = setup
    return RolloutEngine(model, tok, disp, cfg(**kw), num_prompts=P, seed=0)


@pytest.fixture(scope="module")
def shared(setup):
    """One engine of the default config (one compilation) and its rollout of P prompts at seed 11."""
    eng = engine(setup)
    return eng, eng.run([prompt_ids(setup[0])] * P, seed=11)


def test_config_checks_name_the_key():
    pol = make_policy(cfg(), 100)
    assert pol.budget == 10 and pol.initial_samples == 2 and pol.holds_finished
    assert make_policy(cfg(tree_keep_leaves=3, total_rollouts=6), 100).budget == 10  # makes 10, returns 6
    for kw, key in [(dict(total_rollouts=9), "rollout.total_rollouts must be initial_rollouts"),
                    (dict(tree_keep_leaves=6), "rollout.tree_keep_leaves must be in"),
                    (dict(tree_expansions_per_round=0, total_rollouts=2), "rollout.tree_expansions_per_round"),
                    (dict(tree_rounds=-1), "rollout.tree_rounds"),
                    (dict(initial_rollouts=0), "rollout.initial_rollouts")]:
        with pytest.raises(ValueError, match=key):
            cfg(**kw)
    assert make_policy(cfg(tree_rounds=0, total_rollouts=2), 100).budget == 2  # L = 0: M independent chains


def _node_of(parent: Trajectory, pos: int) -> bool:
    """Whether ``pos`` is a non-leaf node boundary of ``parent``: the root, or its own
    continued-after result end."""
    return (pos == 0 and parent.parent < 0) or pos in node_boundaries(parent)


def _check_trees(res, m_trees, leaves, num_prompts=P):
    """Per prompt: m_trees trees of ``leaves`` chains each; every expansion forked at a node
    boundary of its source with the shared prefix identical; a valid forest."""
    trajs = res.trajectories
    assert np.all(np.bincount([t.prompt_index for t in trajs], minlength=num_prompts) == m_trees * leaves)
    for group in res.by_prompt().values():
        assert sorted(len(tree) for tree in trees_of(group)) == [leaves] * m_trees
    for t in trajs:
        if t.parent < 0:
            assert t.branch_pos == 0 and t.depth == 0
            continue
        src = trajs[t.parent]
        assert src.prompt_index == t.prompt_index and t.depth == src.depth + 1
        for name in ("tokens", "mask", "logprobs", "entropies"):
            assert getattr(t, name)[: t.branch_pos] == getattr(src, name)[: t.branch_pos]
        assert len(t.tokens) > t.branch_pos  # expanded to completion: its own tokens
    parent, branch_pos = tree_arrays(trajs)
    validate_tree(parent, branch_pos, group_ids=np.asarray([t.prompt_index for t in trajs]),
                  lengths=np.asarray([len(t.tokens) for t in trajs]))


def test_budgets_expansion_points_and_single_prefill(setup, shared, monkeypatch):
    """Exactly M·(1 + L·N) chains per prompt, each expansion forked (no prefill) at a node
    boundary of its source, rewound to exactly the sampler state recorded there."""
    tok, _, _ = setup
    eng = shared[0]
    marks, forks = {}, []
    appended, node_mark = eng._result_appended, eng._node_mark

    def record_append(run, slot, live, last):  # the sampler state right after each tool result
        marks[(live.traj.uid, len(live.traj.tokens))] = (int(eng.sampler.lengths[slot]), last,
                                                         int(eng.sampler.budget[slot]))
        appended(run, slot, live, last)

    def record_mark(traj, pos):
        mark = node_mark(traj, pos)
        forks.append((traj.uid, pos, traj.branch_pos, mark))
        return mark

    monkeypatch.setattr(eng, "_result_appended", record_append)
    monkeypatch.setattr(eng, "_node_mark", record_mark)
    prompts = [prompt_ids(tok), tok.encode("Q<think>hmm", add_special_tokens=False)] * 2
    res = eng.run(prompts, seed=3)
    _check_trees(res, M, 1 + L * N)
    assert len(forks) == P * M * L * N
    for uid, pos, own_from, mark in forks:
        if pos:
            assert pos > own_from and mark == (*marks[(uid, pos)], pos)  # the source's own node
    trajs = res.trajectories
    for t in trajs:
        if t.parent >= 0:
            assert _node_of(trajs[t.parent], t.branch_pos), (t.branch_pos, trajs[t.parent].obs_spans)
    assert any(t.branch_pos > 0 for t in trajs) and any(t.parent >= 0 and t.branch_pos == 0 for t in trajs)
    s = res.stats
    assert s["rollout/prompt_prefills_per_prompt"] == 1.0
    own_results = sum(c.end - c.start for t in trajs for c in t.tool_calls if c.start >= t.branch_pos)
    assert s["rollout/sampler/prefill_tokens"] == sum(len(p) - 1 for p in prompts) + own_results
    assert s["rollout/branches_granted"] == s["rollout/branches_made"] == P * M * L * N
    assert s["rollout/branches_dropped"] == s["rollout/branches_pruned"] == 0
    assert 0 < s["rollout/branch_concentration"] <= 1 and s["rollout/branch_decisions"] == 0


def test_same_seed_same_trees_with_slots_for_one_prompt(setup, shared):
    """Same seed: the same trees with slots for every prompt and for one prompt at a time."""
    eng, full = shared
    prompts = [prompt_ids(setup[0])] * P
    assert _by_prompt(eng.run(prompts, seed=11)) == _by_prompt(full)
    assert _by_prompt(engine(setup, num_slots=M * (1 + L * N)).run(prompts, seed=11)) == _by_prompt(full)
    assert _by_prompt(eng.run(prompts, seed=12)) != _by_prompt(full)
    _check_trees(full, M, 1 + L * N)


def test_same_seed_same_trees_in_a_paged_pool_of_one_prompt(setup, shared):
    """The same trees in a paged pool holding one prompt's worst case (finished chains keep
    their pages for the expansions; prompts admitted, paused or evicted by pages)."""
    one_prompt = worst_case_pages(8, 40, M * (1 + L * N), 4, 8)
    paged = engine(setup, kv_layout="paged", page_size=4, kv_pages=one_prompt).run([prompt_ids(setup[0])] * P,
                                                                                 seed=11)
    assert _by_prompt(paged) == _by_prompt(shared[1])
    assert paged.stats["rollout/kv_pages"] == one_prompt and paged.stats["rollout/branches_dropped"] == 0


def test_leaf_subsampling_keeps_k_per_tree_of_the_same_trees(setup, shared, monkeypatch):
    """K = 3 of 5 leaves per tree: the kept chains are chains of the full tree (same seed), the
    forest re-pointed past the pruned ones, granted = made + pruned."""
    eng, full = shared
    prompts = [prompt_ids(setup[0])] * P
    sub_policy = make_policy(cfg(tree_keep_leaves=3, total_rollouts=M * 3), len(setup[0]))
    assert sub_policy.budget == eng.budget  # the same chains made; fewer returned
    monkeypatch.setattr(eng, "policy", sub_policy)
    sub = eng.run(prompts, seed=11)
    _check_trees(sub, M, 3)
    chains = {(t.prompt_index, tuple(t.tokens)) for t in full.trajectories}
    assert all((t.prompt_index, tuple(t.tokens)) in chains for t in sub.trajectories)
    s = sub.stats
    assert s["rollout/branches_pruned"] == P * M * 2 and s["rollout/branches_dropped"] == 0
    assert s["rollout/branches_granted"] == s["rollout/branches_made"] + s["rollout/branches_pruned"]


def _traj(uid, parent=-1, branch_pos=0, n=10):
    return Trajectory(prompt_index=0, uid=uid, prompt_tokens=[1], parent=parent, branch_pos=branch_pos,
                      tokens=list(range(n)))


def test_prune_repoints_past_pruned_ancestors():
    # tree: 0 -> 1 @6, 1 -> 2 @8, 0 -> 3 @4, 1 -> 4 @3
    trajs = [_traj(0), _traj(1, 0, 6), _traj(2, 1, 8), _traj(3, 0, 4), _traj(4, 1, 3)]
    kept = prune(trajs, {0, 2, 4})
    assert [(t.uid, t.parent, t.branch_pos, t.depth) for t in kept] == [(0, -1, 0, 0), (2, 0, 6, 1), (4, 0, 3, 1)]
    trajs = [_traj(0), _traj(1, 0, 6), _traj(2, 1, 8), _traj(3, 0, 4), _traj(4, 1, 3)]
    kept = prune(trajs, {2, 3})  # root pruned: 2 stands in; 3 shares min(4, 6) with it
    assert [(t.uid, t.parent, t.branch_pos, t.depth) for t in kept] == [(2, -1, 0, 0), (3, 2, 4, 1)]


def _verl_norm(r, eps=1e-6):
    if len(r) == 1:
        return r / (1 + eps)
    std = r.std(ddof=1)
    return np.zeros_like(r) if std == 0 else (r - r.mean()) / (std + eps)


def test_tree_advantage_on_a_real_tree_search_rollout(shared):
    """``tree`` (A_intra + A_inter) on the trees the rollout made equals a numpy reference
    grouping the chains by prompt and by the root they descend from."""
    trajs = shared[1].trajectories
    rewards = np.asarray([float("\\boxed{42}" in t.text) for t in trajs])
    assert 0 < rewards.sum() < len(rewards)
    parent, branch_pos = tree_arrays(trajs)
    width = max(len(t.tokens) for t in trajs)
    mask = np.zeros((len(trajs), width), np.int32)
    for i, t in enumerate(trajs):
        mask[i, : len(t.mask)] = t.mask
    groups = np.asarray([t.prompt_index for t in trajs])
    out = ESTIMATORS["tree"](AdvantageInputs(rewards, groups, parent, branch_pos, mask), EstimatorOptions())
    root = np.arange(len(trajs))
    while np.any(parent[root] >= 0):
        root = np.where(parent[root] >= 0, parent[root], root)
    ref = np.zeros(len(trajs))
    for key in (groups, root):
        for g in np.unique(key):
            ref[key == g] += _verl_norm(rewards[key == g])
    np.testing.assert_allclose(np.asarray(out.sequence), ref, rtol=1e-5, atol=1e-5)
