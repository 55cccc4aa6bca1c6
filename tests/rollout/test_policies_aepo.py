"""The ``aepo`` branching policy: its hooks on hand-made trajectories (the penalised rule, the
three consecutive-branch counters, pre-monitoring, the concentration metric), and, in the
agent loop on a scripted tool-looping model, that the penalty lowers branch concentration."""

import math

import numpy as np
import pytest

import tests.rollout.scripted as scripted
from arpo_jax.algorithms.aepo import aepo_branch_probability, premonitor_initial_samples
from arpo_jax.rollout import POLICIES, RolloutConfig, Trajectory
from arpo_jax.rollout.policies import make_policy
from arpo_jax.rollout.policies.aepo import AepoOptions, AepoPolicy
from arpo_jax.rollout.stats import branch_concentration_metrics
from arpo_jax.rollout.trajectory import ToolRecord
from arpo_jax.tools import ToolDispatcher, ToolOutput

V = 1000


def cfg(**kw):
    base = dict(policy="aepo", total_rollouts=8, initial_rollouts=3, entropy_tokens=2, entropy_weight=0.2,
                threshold=0.5)
    return RolloutConfig(**{**base, **kw})


def grow(t: Trajectory, topk, calls=1):
    """Appends a segment of model tokens with these top-k entropies, then ``calls`` tool calls'
    bookkeeping (a result of 2 tokens each), so the next decision is at the next step."""
    t.add_model_tokens([5] * len(topk), [0.0] * len(topk), [0.5] * len(topk), topk)
    for _ in range(calls):
        s, e = t.add_inserted_tokens([9, 9])
        t.obs_spans.append((s, e))
        t.tool_calls.append(ToolRecord("python", "", "ok", True, 0.0, s, e))


def decide(pol, t, rng):
    start = t.segment_start()
    return pol.on_segment_end(t, 0, start, rng)


def test_registered_and_options_checked():
    assert "aepo" in POLICIES and isinstance(make_policy(cfg(), V), AepoPolicy)
    with pytest.raises(ValueError, match="consecutive_scope must be one of"):
        AepoOptions(consecutive_scope="batch")
    with pytest.raises(ValueError, match="penalty_slope"):
        AepoOptions(penalty_slope=-1)
    with pytest.raises(ValueError, match="initial_rollouts"):
        cfg(initial_rollouts=9)


def test_aepo_options_from_yaml_reach_the_policy():
    """``rollout.aepo.<knob>=...`` overrides load into ``RolloutConfig.aepo`` and the policy reads
    them; an unknown or invalid knob is a one-line error naming it."""
    from pathlib import Path

    from arpo_jax.config import ConfigError, load_config
    from arpo_jax.training.rl_config import RLConfig

    yaml = Path(__file__).resolve().parents[2] / "configs" / "aepo_qwen3_14b_deepsearch.yaml"
    assert load_config(RLConfig, yaml).rollout.aepo == AepoOptions()  # the release's defaults
    rc = load_config(RLConfig, yaml, ["rollout.aepo.penalty_slope=0.3", "rollout.aepo.consecutive_scope=chain",
                                      "rollout.aepo.enable_dynamic_rollouts=true",
                                      "rollout.aepo.premonitor_tool_entropy=0.5"]).rollout
    pol = make_policy(rc, V)
    assert pol.options == rc.aepo == AepoOptions(penalty_slope=0.3, consecutive_scope="chain",
                                                 enable_dynamic_rollouts=True, premonitor_tool_entropy=0.5)
    assert pol.wants_root_entropy
    with pytest.raises(ConfigError, match="unknown config key 'rollout.aepo.slope'"):
        load_config(RLConfig, yaml, ["rollout.aepo.slope=0.3"])
    with pytest.raises(ConfigError, match="rollout.aepo.consecutive_scope must be one of"):
        load_config(RLConfig, yaml, ["rollout.aepo.consecutive_scope=batch"])
    with pytest.raises(ConfigError, match="rollout.aepo.premonitor_beta: expected float"):
        load_config(RLConfig, yaml, ["rollout.aepo.premonitor_beta=high"])


def test_prompt_counter_counts_steps_with_a_branch():
    pol = AepoPolicy(cfg(threshold=0.0), V, AepoOptions(penalty_slope=0.3))  # τ 0: every decision branches
    rng = np.random.default_rng(0)
    a = Trajectory(prompt_index=0, uid=0, prompt_tokens=[1])
    grow(a, [1.0, 1.0], calls=0)
    a.initial_entropy = pol.initial_entropy(a, 0)
    d0 = decide(pol, a, rng)
    assert d0["consecutive"] == 0 and d0["branch"] and pol.topk_entropy == 10
    grow(a, [], calls=1)
    grow(a, [1.0, 1.0], calls=0)
    b = Trajectory(prompt_index=0, uid=1, prompt_tokens=[1])  # another chain of the prompt, still at step 0
    grow(b, [1.0, 1.0], calls=0)
    assert decide(pol, a, rng)["consecutive"] == 1 and decide(pol, b, rng)["consecutive"] == 0
    other = np.random.default_rng(0)  # another prompt run: its own counter
    assert decide(pol, a, other)["consecutive"] == 0


def test_decision_record_and_probability():
    pol = AepoPolicy(cfg(), V, AepoOptions(penalty_slope=0.2))
    rng = np.random.default_rng(3)
    a = Trajectory(prompt_index=2, uid=0, prompt_tokens=[1])
    grow(a, [1.0, 2.0], calls=0)
    a.initial_entropy = pol.initial_entropy(a, 0)
    pol._state(rng).branched_steps.update({0, 1})  # as if the prompt had branched at steps 0 and 1
    grow(a, [], calls=2)
    grow(a, [4.0, 5.0, 70.0], calls=0)
    d = decide(pol, a, rng)
    u, delta = np.random.default_rng(3).random(), (9.0 - 3.0) / math.log(V)
    assert d["consecutive"] == 2 and d["uniform"] == u and d["delta_h"] == pytest.approx(delta)
    assert d["branch"] == (min(max((u + 0.2 * delta) * 0.6, 0), 1) >= 0.5)
    assert d["probability"] == pytest.approx(float(aepo_branch_probability(delta, 2, 0.2, 0.5, 0.2)))


@pytest.mark.parametrize("scope, child_l", [("path", 1), ("chain", 0), ("prompt", 1)])
def test_a_forked_child_inherits_the_path_counter_only_under_path(scope, child_l):
    pol = AepoPolicy(cfg(threshold=0.0), V, AepoOptions(consecutive_scope=scope))
    rng = np.random.default_rng(1)
    a = Trajectory(prompt_index=0, uid=0, prompt_tokens=[1])
    grow(a, [1.0, 1.0], calls=0)
    assert decide(pol, a, rng)["branch"]
    grow(a, [], calls=1)
    child = a.branch(uid=5, upto=len(a.tokens))  # forked right after the result
    grow(child, [1.0, 1.0], calls=0)
    grow(a, [1.0, 1.0], calls=0)
    assert decide(pol, child, rng)["consecutive"] == child_l
    assert decide(pol, a, rng)["consecutive"] == 1  # a branched at step 0 (the child's step-1 branch is not before)


def test_premonitoring():
    off = AepoPolicy(cfg(), V)
    assert not off.wants_root_entropy and off.initial_samples_for(2.0, np.random.default_rng(0)) == 3
    scale = 2 / math.log(V)  # entropy_tokens / ln|V|
    fixed = AepoPolicy(cfg(), V, AepoOptions(enable_dynamic_rollouts=True, premonitor_tool_entropy=0.5))
    assert fixed.wants_root_entropy
    for h_root in (0.1, 0.5, 4.0, 30.0):
        m = fixed.initial_samples_for(h_root, np.random.default_rng(0))
        assert m == premonitor_initial_samples(h_root * scale, 0.5 * scale, 8)
    assert fixed.initial_samples_for(30.0, None) == 8 and fixed.initial_samples_for(None, None) == 3
    running = AepoPolicy(cfg(), V, AepoOptions(enable_dynamic_rollouts=True))
    assert running.initial_samples_for(9.0, None) == 5  # nothing seen yet: H_tool = H_root, floor(8/2) + 1
    a = Trajectory(prompt_index=0, uid=0, prompt_tokens=[1])
    grow(a, [1.0, 1.0], calls=0)  # exact entropies 0.5 each: H_tool = 0.5
    decide(running, a, np.random.default_rng(0))
    assert running.tool_entropy() == pytest.approx(0.5)
    assert running.initial_samples_for(9.0, None) == premonitor_initial_samples(9.0 * scale, 0.5 * scale, 8)


def test_concentration_stats_by_hand():
    trajs = [Trajectory(prompt_index=g, uid=i, prompt_tokens=[1], parent=p) for i, (g, p) in
             enumerate([(0, -1), (0, 0), (0, 0), (0, 0), (0, 1), (0, 2), (0, 3), (1, -1), (2, -1), (2, 8)])]
    mean, pooled = branch_concentration_metrics(trajs)  # prompt 0: sources 0:3, 1:1, 2:1, 3:1 -> 5/6; prompt 2: 1/1
    assert mean == pytest.approx((5 / 6 + 1) / 2)
    assert pooled == pytest.approx(6 / 7)
    assert math.isnan(branch_concentration_metrics(trajs[7:8])[0])


LOOPING = {"\n</result>": {"a": 0.5, "<python>": 0.45, "<answer>": 0.05}, "a": {"<python>": 0.9, "<answer>": 0.1}}


class Answer42:
    """What the sandboxed Python tool answers to the scripted model's only call, without a process
    for each of the ~600 calls here (results are appended one chunk after the call whatever the
    tool's latency; the real tool in the agent loop: test_rollout.py)."""

    def run(self, body, timeout_s=None):
        assert body == "print(6*7)", body
        return ToolOutput("42", "ok")


def test_penalty_lowers_concentration_on_a_tool_looping_model(monkeypatch):
    """Chains that keep calling the tool make many decisions; without the penalty (slope 0:
    ARPO's rule, probability 0.5 + 0.2·ΔH) the earliest chains source most branches. A
    per-chain penalty (slope 1: no two branchings in a row) spreads them."""
    from arpo_jax.rollout import RolloutEngine

    monkeypatch.setattr(scripted, "TRANSITIONS", {**scripted.TRANSITIONS, **LOOPING})
    tok = scripted.build_tokenizer()
    model, _ = scripted.build_model(tok)
    disp = ToolDispatcher({"python": Answer42()})
    # 8 + 55 + 1 = 64 cache positions: one attention window, so each sampler step compiles once
    rc = cfg(total_rollouts=12, initial_rollouts=2, max_response_tokens=55, max_prompt_tokens=8, chunk_size=8,
             max_tool_calls=8, entropy_tokens=3)
    out = {}
    eng = RolloutEngine(model, tok, disp, rc, num_prompts=8, seed=0)
    try:
        for slope in (0.0, 1.0):  # one engine (one compilation); the policy's options swapped
            eng.policy.options = AepoOptions(penalty_slope=slope, consecutive_scope="chain")
            res = eng.run([scripted.prompt_ids(tok)] * 8, seed=2)
            branches = sum(t.parent >= 0 for t in res.trajectories)
            out[slope] = (branch_concentration_metrics(res.trajectories)[0], branches)
            assert len(res.trajectories) == 8 * 12  # budget exactly used
    finally:
        disp.close()
    (arpo, n_arpo), (aepo, n_aepo) = out[0.0], out[1.0]
    assert arpo > 0.7 and n_aepo >= 0.8 * n_arpo  # ARPO concentrates; about as many branches with the penalty
    assert aepo < arpo - 0.05, out
