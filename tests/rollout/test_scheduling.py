"""Scheduling of the agent loop on the scripted model: each prompt prefilled once, granted
branches always made, and the same trajectories and branches whatever the slots or KV memory
(contiguous with few slots, paged with 1/8 of the memory: pausing and eviction)."""

import numpy as np
import pytest

from arpo_jax.rollout import RolloutConfig, RolloutEngine
from arpo_jax.rollout.policies import BranchingPolicy
from arpo_jax.rollout.policies.base import next_token_entropy
from arpo_jax.rollout.scheduler import PageBudget, pages_for, round_need, worst_case_pages
from tests.rollout.scripted import prompt_ids
from tests.rollout.test_rollout import _by_prompt, _check_structure

# a shipped config's shape (M, N) at the scripted model's scale. arpo_7b_8b's (16, 8) runs the same code
# with power-of-two slot counts (as the other tests here do), so only (12, 6) is rolled out here.
SHAPES = {"arpo_14b": (12, 6)}


def _engine(setup, num_prompts, **kw):
    tok, model, disp = setup
    base = dict(policy="arpo_release", total_rollouts=8, initial_rollouts=2, max_response_tokens=40,
                max_prompt_tokens=8, chunk_size=8, max_tool_calls=3, entropy_tokens=3, kv_layout="contiguous")
    base.update(kw)
    return RolloutEngine(model, tok, disp, RolloutConfig(**base), num_prompts=num_prompts, seed=0)


def _executed_result_tokens(res) -> int:
    """Tool-result tokens appended once each (a branch inherits its parent's before the fork)."""
    return sum(c.end - c.start for t in res.trajectories for c in t.tool_calls if c.start >= t.branch_pos)


def _check_branches(res):
    s = res.stats
    assert s["rollout/branches_dropped"] == 0
    made = sum(t.parent >= 0 for t in res.trajectories)
    assert s["rollout/branches_made"] == made == sum(d["granted"] - d["returned"] for d in res.decisions)
    assert s["rollout/branches_granted"] == s["rollout/branches_made"] + s["rollout/branches_returned"]


def test_each_prompt_is_prefilled_once(setup):
    """Prefill = the prompts once + the tool results once: initial samples and refills are
    forks of the prompt's cache, never a second prefill."""
    tok, _, _ = setup
    prompts = [prompt_ids(tok), tok.encode("Q<think>hmm", add_special_tokens=False)] * 2
    res = _engine(setup, 4, policy="arpo").run(prompts, seed=2)
    _check_structure(res, tok, 8, 4)
    assert res.stats["rollout/prompt_prefills_per_prompt"] == 1.0
    prompt_tokens = sum(len(p) - 1 for p in prompts)  # the last prompt token is the pending input
    assert res.stats["rollout/sampler/prefill_tokens"] == prompt_tokens + _executed_result_tokens(res)
    assert sum(t.parent < 0 for t in res.trajectories) > 4 * 2  # refills happened (forked, rewound to the prompt)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_few_slots_give_the_same_rollout_and_drop_no_branch(setup, shape):
    """A shipped config's shape (M, N) on 8 prompts: with slots for every prompt × M and with
    slots for one prompt at a time (1/8), the same trajectories and decisions; every granted
    branch is made (or handed back when its source ended at its result)."""
    tok, _, _ = setup
    m, n = SHAPES[shape]
    prompts = [prompt_ids(tok)] * 8
    full = _engine(setup, 8, total_rollouts=m, initial_rollouts=n).run(prompts, seed=7)
    few = _engine(setup, 8, total_rollouts=m, initial_rollouts=n, num_slots=m).run(prompts, seed=7)
    assert _by_prompt(few) == _by_prompt(full)
    for res in (full, few):
        _check_structure(res, tok, m, 8)
        _check_branches(res)
    assert full.stats["rollout/branches_made"] > 8  # branching happened


def _paged(setup, num_prompts, fraction, **kw):
    """A paged engine with ``fraction`` of the pages all prompts × M need at full length."""
    cfg = dict(kv_layout="paged", page_size=4, **kw)
    full = worst_case_pages(8, kw.get("max_response_tokens", 40), 8, 4, 8) * num_prompts  # _engine: M 8, chunk 8
    return _engine(setup, num_prompts, kv_pages=max(int(full * fraction), 1), **cfg)


@pytest.mark.parametrize("policy", ["arpo", "arpo_release"])
def test_paged_memory_for_an_eighth_gives_the_same_rollout(setup, policy):
    """Memory for all prompts × M at full length vs 1/8 of it (prompts admitted by pages), and
    1/8 with an admission estimate far too low (prompts paused for memory): the same
    trajectories and branches, granted = made."""
    tok, _, _ = setup
    prompts = [prompt_ids(tok)] * 8
    full = _paged(setup, 8, 1, policy=policy).run(prompts, seed=7)
    small_engine = _paged(setup, 8, 1 / 8, policy=policy)
    assert small_engine.pages.num_pages == small_engine.worst_pages  # 1/8 of 8 prompts: one prompt's worst case
    small = small_engine.run(prompts, seed=7)
    small_engine.pages.completed_pages[:] = [1]  # as if prompts needed one page: all admitted at once
    squeezed = small_engine.run(prompts, seed=7)
    for res in (small, squeezed):
        assert _by_prompt(res) == _by_prompt(full)
    for res in (full, small, squeezed):
        _check_structure(res, tok, 8, 8)
        _check_branches(res)
    assert full.stats["rollout/evictions"] == full.stats["rollout/paused_prompt_rounds"] == 0
    assert squeezed.stats["rollout/paused_prompt_rounds"] > 0  # prompts sat rounds out for memory


def test_eviction_of_the_youngest_prompt_gives_the_same_rollout(setup, monkeypatch):
    """The eviction path: when not even the oldest running prompt fits the free pages, the
    youngest admitted prompt is released, discarded and re-queued first; re-admitted, it re-runs
    identically. Pausing and the rounds' fork reservations make this rare on the scripted model
    (1/8 memory, optimistic estimates and long prompts all paused without evicting), so the
    round plan here reports no room once, while three prompts are admitted and running (as
    when the younger prompts hold the pages the oldest needs)."""
    tok, _, _ = setup
    prompts = [prompt_ids(tok)] * 3
    engine = _paged(setup, 3, 1, policy="arpo")
    full = engine.run(prompts, seed=5)
    engine.pages.completed_pages.clear()  # as a new engine (admission estimated from no prompt), not recompiled
    real_plan, calls = PageBudget.plan, []

    def plan_with_one_shortage(needs, free):
        calls.append(len(needs))
        if len(needs) >= 3 and calls.count(-1) == 0 and len(calls) > 3:
            calls.append(-1)  # this call: the oldest does not fit
            return 0
        return real_plan(needs, free)

    monkeypatch.setattr(engine.pages, "plan", plan_with_one_shortage)
    res = engine.run(prompts, seed=5)
    assert -1 in calls and res.stats["rollout/evictions"] >= 1
    assert _by_prompt(res) == _by_prompt(full)
    _check_structure(res, tok, 8, 3)
    _check_branches(res)
    assert full.stats["rollout/evictions"] == 0
    assert engine.sampler.pages_free() == engine.pages.num_pages  # the evicted prompt's pages came back


def test_a_memory_budget_below_one_prompt_is_rejected(setup):
    with pytest.raises(ValueError, match="rollout.kv_pages .* cannot hold one prompt's worst case"):
        _engine(setup, 2, kv_layout="paged", page_size=4, kv_pages=10)
    with pytest.raises(ValueError, match="rollout.num_slots .4. is below rollout.total_rollouts .8."):
        _engine(setup, 2, num_slots=4)


def test_root_entropy_hook_sizes_the_initial_samples(setup, monkeypatch):
    """AEPO's hook: after the single prefill the policy gets the prompt's next-token entropy
    (= the entropy the sampler reports for the first sampled token) and picks N from it."""
    from arpo_jax.rollout import POLICIES

    seen = []

    class ByEntropy(BranchingPolicy):
        wants_root_entropy = True

        def initial_samples_for(self, root_entropy, rng):
            seen.append(root_entropy)
            return 2 if root_entropy > 0.8 else 3

    monkeypatch.setitem(POLICIES, "by_entropy", ByEntropy)
    tok, _, _ = setup
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("Q<think>", "Q<think>hmm")]  # H = 1.03, 0.61
    res = _engine(setup, 2, policy="by_entropy").run(prompts, seed=1)
    groups = res.by_prompt()
    assert [len(groups[0]), len(groups[1])] == [2, 3]
    for p, h in enumerate(seen):
        assert all(t.entropies[0] == pytest.approx(h, abs=1e-4) for t in groups[p])
    assert seen[0] == pytest.approx(-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)), abs=1e-4)


def test_next_token_entropy_matches_a_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50) * 3
    logits[:5] = -np.inf
    for temp in (1.0, 0.6):
        p = [np.exp(x / temp) for x in logits]
        p = [x / sum(p) for x in p]
        ref = -sum(x * np.log(x) for x in p if x > 0)
        assert next_token_entropy(logits, temp) == pytest.approx(ref, rel=1e-12)


def test_page_budget_plan_and_estimates():
    assert PageBudget.plan([3, 4, 5], 7) == 2 and PageBudget.plan([3, 4, 5], 2) == 0
    assert PageBudget.plan([3, 4, 5], 12) == 3 and PageBudget.plan([], 5) == 0
    # prompt of 10 tokens in pages of 4 (3), M = 2 trajectories of 9 response tokens (+1: 3 pages)
    # + a copied partial page + a chunk of 5 (2 pages) each
    assert worst_case_pages(10, 9, 2, 4, 5) == 3 + 2 * (3 + 1 + 2)
    assert round_need(4, 5, [1, 2], 2) == 3 + 2 * (2 + 2)
    budget = PageBudget(num_pages=100, page_size=4, m=2, chunk=5, worst=40)
    assert budget.estimate() == 40 and budget.can_admit(0) and budget.can_admit(1) and not budget.can_admit(2)
    budget.completed_pages += [10, 14]
    assert budget.estimate() == 15 and budget.can_admit(5) and not budget.can_admit(6)  # ceil(12 × 1.25)
    assert pages_for(0, 4) == 0 and pages_for(9, 4) == 3
