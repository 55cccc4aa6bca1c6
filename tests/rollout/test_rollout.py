"""The agent loop with real tools on a scripted stochastic model: budgets, masks, shared
prefixes, the paper and release branching rules, tool limits, determinism."""

import math

import numpy as np
import pytest
from flax import nnx

from arpo_jax.rollout import RolloutConfig, RolloutEngine, tree_arrays
from arpo_jax.training.update import score_tokens
from tests.rollout.scripted import build_model, prompt_ids

import jax.numpy as jnp

P = 4


def _engine(setup, **kw):
    tok, model, disp = setup
    base = dict(total_rollouts=8, initial_rollouts=2, max_response_tokens=48, max_prompt_tokens=8, chunk_size=8,
                max_tool_calls=3, entropy_tokens=3)
    base.update(kw)
    return RolloutEngine(model, tok, disp, RolloutConfig(**base), num_prompts=P, seed=0)


@pytest.fixture(scope="module")
def engine_for(setup):
    """policy → an ``_engine`` with the defaults, shared by the tests of this module: an engine
    compiles its sampler's steps once, and a run depends only on its prompts and seed."""
    engines = {}

    def get(policy):
        if policy not in engines:
            engines[policy] = _engine(setup, policy=policy)
        return engines[policy]

    return get


def _check_structure(res, tok, m, num_prompts=P):
    trajs = res.trajectories
    counts = np.bincount([t.prompt_index for t in trajs], minlength=num_prompts)
    assert np.all(counts == m)  # exactly M per prompt: never more, refilled when short
    obs_text = " <result>\n42\n</result>"
    for t in trajs:
        a = t.arrays()
        assert len(a["tokens"]) == len(a["mask"]) == len(a["logprobs"]) == len(a["entropies"])
        inside = np.zeros(len(a["tokens"]), bool)
        for s, e in t.obs_spans:
            inside[s:e] = True
            assert tok.decode(a["tokens"][s:e].tolist()) == obs_text  # the real sandboxed tool answered
        eos_inserted = t.finish_reason == "tool_limit"
        model_tok = ~inside
        if eos_inserted:
            model_tok[-1] = False
        assert np.all(a["mask"][inside] == 0) and np.all(a["mask"][model_tok] == 1)
        assert np.all(a["logprobs"][a["mask"] == 0] == 0) and np.all(a["logprobs"][a["mask"] == 1] <= 0)
        if t.parent >= 0:
            parent = trajs[t.parent]
            assert t.tokens[: t.branch_pos] == parent.tokens[: t.branch_pos]  # shared prefix, exactly
            assert t.mask[: t.branch_pos] == parent.mask[: t.branch_pos]
            assert t.logprobs[: t.branch_pos] == parent.logprobs[: t.branch_pos]
            assert parent.prompt_index == t.prompt_index and t.depth == parent.depth + 1
            assert any(e == t.branch_pos for _, e in parent.obs_spans)  # forked right after a tool result
    parent, branch_pos = tree_arrays(trajs)
    from arpo_jax.algorithms import validate_tree

    validate_tree(parent, branch_pos, group_ids=np.asarray([t.prompt_index for t in trajs]),
                  lengths=np.asarray([len(t.tokens) for t in trajs]))


@pytest.mark.parametrize("policy", ["trajectory", "arpo", "arpo_release"])
def test_rollout_structure_masks_and_shared_prefixes(setup, engine_for, policy):
    tok, model, _ = setup
    eng = engine_for(policy)
    res = eng.run([prompt_ids(tok)] * P, seed=3)
    _check_structure(res, tok, 8)
    if policy != "trajectory":
        assert res.stats["rollout/branches_per_prompt"] > 0 and res.decisions
    # the sampler's log-probs are what the trainer computes for the same sequences (one right-padded
    # batch of a fixed width, as the trainer scores them: one compilation, not one per length)
    trajs = res.trajectories[:6]
    seqs = [t.prompt_tokens + t.tokens for t in trajs]
    tokens = np.zeros((len(seqs), 64), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    attn = (np.arange(64)[None] < np.asarray([len(s) for s in seqs])[:, None]).astype(np.int32)
    graphdef, params = nnx.split(model)
    lp, ent = score_tokens(params, jnp.asarray(tokens), jnp.asarray(attn), graphdef=graphdef, vocab_size=len(tok))
    for i, t in enumerate(trajs):
        p, n = len(t.prompt_tokens), len(seqs[i])
        m = np.asarray(t.mask, bool)
        np.testing.assert_allclose(np.asarray(lp)[i, p:n][m], np.asarray(t.logprobs)[m], atol=2e-4)
        np.testing.assert_allclose(np.asarray(ent)[i, p:n][m], np.asarray(t.entropies)[m], atol=2e-4)
    # determinism: same seed, same rollout
    again = eng.run([prompt_ids(tok)] * P, seed=3)
    assert [t.tokens for t in again.trajectories] == [t.tokens for t in res.trajectories]


def test_paper_rule_branch_rate_follows_alpha_plus_beta_delta_h(setup):
    """Stochastic reading of the paper rule: measured ΔH (recomputed here from the trajectory's
    entropies) maps to P = clip(α + β·ΔH) and branches happen at rate P (binomial z-test)."""
    tok, _, _ = setup
    alpha, beta, k = 0.35, 0.6, 3
    # M = 4: a prompt's decisions are made on its first chains (about two), whatever M; the refills
    # that fill a larger budget make none, and only cost tool calls
    n, m = 32, 4
    eng = _engine(setup, policy="arpo", paper_decision="stochastic", base_probability=alpha, entropy_weight=beta,
                  total_rollouts=m, initial_rollouts=2, entropy_tokens=k, num_slots=n * m)
    decisions, probs = [], []
    for seed in range(3):
        res = eng.run([prompt_ids(tok)] * n, seed=seed)
        by_uid = {t.uid: t for t in res.trajectories}
        for d in res.decisions:
            t = by_uid[d["uid"]]
            ents = np.asarray(t.entropies)[np.asarray(t.mask, bool)]
            assert math.isclose(d["initial_entropy"], ents[:k].mean(), rel_tol=1e-5, abs_tol=1e-6)
            p = float(np.clip(alpha + beta * (d["entropy"] - d["initial_entropy"]), 0, 1))
            assert math.isclose(d["probability"], p, abs_tol=1e-5)
            decisions.append(d["branch"])
            probs.append(p)
        _check_structure(res, tok, m, n)
    decisions, probs = np.asarray(decisions, float), np.asarray(probs)
    assert len(decisions) >= 120 and probs.std() > 0.05  # many decisions at varied probabilities
    z = (decisions.sum() - probs.sum()) / math.sqrt((probs * (1 - probs)).sum())
    assert abs(z) < 4, z
    hi, lo = probs > np.median(probs), probs <= np.median(probs)
    assert decisions[hi].mean() > decisions[lo].mean()


def test_release_rule_reproduced_on_recorded_entropies(setup):
    """arpo_release: H = Σ top-10 entropies of the first 20 tokens of the segment that ended
    with the tool call / ln|V|; branch iff clip(U − β·ΔH, 0, 1) <= τ."""
    tok, _, _ = setup
    eng = _engine(setup, policy="arpo_release", entropy_tokens=20, entropy_weight=0.2, threshold=0.5)
    res = eng.run([prompt_ids(tok)] * P, seed=11)
    by_uid = {t.uid: t for t in res.trajectories}
    assert res.decisions
    for d in res.decisions:
        t = by_uid[d["uid"]]
        root = t
        while root.parent >= 0:
            root = by_uid[root.parent]
        first = root.obs_spans[0][0] if root.obs_spans else len(root.tokens)  # the initial generation
        assert math.isclose(d["initial_entropy"], sum(root.topk_entropies[:first][:20]) / math.log(len(tok)),
                            rel_tol=1e-5, abs_tol=1e-7)
        start = max([0] + [e for _, e in t.obs_spans if e <= d["position"]])  # the segment ending in the call
        seg = np.asarray(t.topk_entropies[start:d["position"]])[np.asarray(t.mask[start:d["position"]], bool)]
        assert math.isclose(d["entropy"], seg[:20].sum() / math.log(len(tok)), rel_tol=1e-5, abs_tol=1e-7)
        branch = min(max(d["uniform"] - 0.2 * d["delta_h"], 0.0), 1.0) <= 0.5
        assert branch == d["branch"]
    _check_structure(res, tok, 8)


def test_a_registered_policy_runs_without_engine_changes(setup, monkeypatch):
    """The extension point: a ``BranchingPolicy`` subclass in the registry is a
    ``rollout.policy`` the engine runs (here: branch at every tool call, refill all at once)."""
    from arpo_jax.rollout import POLICIES
    from arpo_jax.rollout.policies import BranchingPolicy

    class EveryCall(BranchingPolicy):
        initial_samples = 2

        def on_segment_end(self, traj, slot, start, rng):
            return self.decision(traj, entropy=0.0, initial_entropy=0.0, delta_h=0.0, probability=1.0,
                                 uniform=float(rng.random()), branch=True)

        def refill(self, missing):
            return missing

    monkeypatch.setitem(POLICIES, "every_call", EveryCall)
    tok, _, _ = setup
    res = _engine(setup, policy="every_call").run([prompt_ids(tok)] * P, seed=4)
    _check_structure(res, tok, 8)
    branches = [t for t in res.trajectories if t.parent >= 0]
    assert res.decisions and all(d["branch"] for d in res.decisions)
    assert 0 < len(branches) <= sum(d["granted"] for d in res.decisions)  # a grant is handed back if the source ends


def test_stale_baseline_keeps_the_first_value_per_slot(setup, monkeypatch):
    """The release's bug (stale_entropy_baseline): H_initial is a table keyed by slot, filled
    with the first value each slot ever sees and never reset, so a decision compares its
    segment's entropy with that value, not with its own trajectory's initial entropy.

    Between the two runs the policy changes (lm_head × 0.8: every non-deterministic next-token
    distribution flattens), as after an RL update: the second run's own initial entropies are
    then all different from the table's (the scripted model alone has only two values, so a
    check like "the value is in the table" would pass without the bug), and each decision's
    expected baseline is exactly the table's value for the slot it was made in."""
    tok, model, _ = setup
    k = 3
    eng = _engine(setup, policy="arpo_release", stale_entropy_baseline=True, entropy_tokens=k)
    eng.run([prompt_ids(tok)] * P, seed=1)
    table = dict(eng.policy.stale_initial)
    assert table
    flatter, _ = build_model(tok)
    flatter.lm_head[...] = model.lm_head[...] * 0.8
    eng.update_params(flatter)
    seen = {}  # (trajectory, position) of each decision → (slot, table value then): the results do not record it
    decide, stale_table = eng.policy.on_segment_end, eng.policy.stale_initial
    monkeypatch.setattr(eng.policy, "on_segment_end", lambda traj, slot, *a: (
        seen.setdefault((id(traj), len(traj.tokens)), (slot, stale_table.get(slot))), decide(traj, slot, *a))[1])
    res = eng.run([prompt_ids(tok)] * P, seed=2)
    final = eng.policy.stale_initial
    assert {s: final[s] for s in table} == table  # never reset or updated (new slots may be added)
    assert len(seen) == len(res.decisions) and res.decisions
    by_uid = {t.uid: t for t in res.trajectories}
    stale = 0
    for d in res.decisions:
        slot, then = seen[id(by_uid[d["uid"]]), d["position"]]
        root = by_uid[d["uid"]]
        while root.parent >= 0:
            root = by_uid[root.parent]
        own = float(np.asarray(root.topk_entropies)[np.asarray(root.mask, bool)][:k].sum() / math.log(len(tok)))
        if slot in table:  # the stale value; its own (new policy) baseline would be clearly different
            expected = table[slot]
            assert abs(own - expected) > 1e-3, (own, expected)
            stale += 1
        else:  # a slot first filled in this run: the first value it saw, if any yet, else its own
            expected = own if then is None else then
        assert math.isclose(d["initial_entropy"], expected, rel_tol=1e-5, abs_tol=1e-7), (d, slot, expected)
        assert math.isclose(d["delta_h"], d["entropy"] - expected, rel_tol=1e-5, abs_tol=1e-6), d
    assert stale >= len(res.decisions) // 2  # most decisions (here all) ran on a stale baseline


def test_tool_limit_ends_the_trajectory_with_eos(setup):
    tok, _, _ = setup
    eng = _engine(setup, policy="trajectory", max_tool_calls=1, total_rollouts=16)
    res = eng.run([prompt_ids(tok)] * P, seed=0)
    limited = [t for t in res.trajectories if t.finish_reason == "tool_limit"]
    assert limited
    for t in limited:
        assert t.num_tool_calls == 1 and t.tokens[-1] == tok.eos_token_id and t.mask[-1] == 0
        assert t.text.rstrip().endswith("</python>")
    assert all(t.num_tool_calls <= 1 for t in res.trajectories)


def _by_prompt(res, offset=0):
    """Each prompt's trajectories (creation order; parents as ordinals within the prompt) and
    decisions, keyed by the prompt's position in the whole batch."""
    trees, decisions, ordinal = {}, {}, {}
    for t in res.trajectories:
        tree = trees.setdefault(offset + t.prompt_index, [])
        ordinal[t.uid] = len(tree)
        tree.append((t.tokens, t.mask, ordinal.get(t.parent, -1), t.branch_pos, t.finish_reason,
                     [c.body for c in t.tool_calls], np.round(t.logprobs, 5).tolist()))
    for d in res.decisions:
        decisions.setdefault(offset + d["prompt_index"], []).append(
            (ordinal[d["uid"]], d["position"], d["branch"], d["granted"], d["uniform"]))
    return trees, decisions


@pytest.mark.parametrize("policy", ["trajectory", "arpo", "arpo_release"])
def test_prompt_shards_roll_out_exactly_like_the_whole_batch(setup, engine_for, policy):
    """Per-prompt randomness: two runs over halves of the batch (``prompt_offset``), on an
    engine with half the slots, give exactly the trajectories and branching decisions of one
    run over the whole batch — what the JAX processes of a multi-host RL step rely on."""
    tok, _, _ = setup
    prompts = [prompt_ids(tok)] * P
    whole = engine_for(policy).run(prompts, seed=5)
    half = _engine(setup, policy=policy, num_slots=P // 2 * 8)
    shards = [half.run(prompts[: P // 2], seed=5), half.run(prompts[P // 2:], seed=5, prompt_offset=P // 2)]
    trees, decisions = _by_prompt(whole)
    parts = [_by_prompt(r, offset=i * P // 2) for i, r in enumerate(shards)]
    assert {**parts[0][0], **parts[1][0]} == trees
    assert {**parts[0][1], **parts[1][1]} == decisions
    assert len({str(v) for v in trees.values()}) > 1  # the prompts (identical text) were sampled differently
    if policy != "trajectory":
        assert sum(len(v) for v in decisions.values()) > 0
