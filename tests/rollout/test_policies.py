"""Branching policies without a model: the registry, config checks, and each policy's hooks on
hand-made trajectories (the numbers a decision records, the random draws it makes)."""

import math

import numpy as np
import pytest

from arpo_jax.config import ConfigError, from_dict
from arpo_jax.rollout import POLICIES, RolloutConfig, Trajectory
from arpo_jax.rollout.policies import BranchingPolicy, make_policy, register

V = 1000


def traj_with(entropies, topk=None, initial=None):
    """A trajectory of model tokens with these per-token entropies, a 3-token tool result after
    the first two, and the given initial entropy."""
    t = Trajectory(prompt_index=2, uid=7, prompt_tokens=[1])
    topk = entropies if topk is None else topk
    t.add_model_tokens([5, 6], [0.0, 0.0], entropies[:2], topk[:2])
    t.obs_spans.append(t.add_inserted_tokens([9, 9, 9]))
    t.add_model_tokens([5] * (len(entropies) - 2), [0.0] * (len(entropies) - 2), entropies[2:], topk[2:])
    t.initial_entropy = initial
    return t


def test_registry_and_config_checks():
    assert {"trajectory", "arpo", "arpo_release"} <= set(POLICIES)
    with pytest.raises(ValueError, match="already registered"):
        register("arpo")(type("Other", (BranchingPolicy,), {}))
    with pytest.raises(ValueError, match="rollout.policy must be one of"):
        RolloutConfig(policy="grpo")
    with pytest.raises(ConfigError, match="rollout.policy"):
        from_dict(RolloutConfig, {"policy": "grpo"}, "rollout.")
    with pytest.raises(ValueError, match="stale_entropy_baseline"):
        RolloutConfig(policy="arpo", stale_entropy_baseline=True)
    with pytest.raises(ValueError, match="initial_rollouts"):
        RolloutConfig(policy="arpo_release", initial_rollouts=17)
    RolloutConfig(policy="trajectory", total_rollouts=1)  # N is unused without branching
    with pytest.raises(ValueError, match="entropy_normalization"):
        RolloutConfig(entropy_normalization="max")


def test_trajectory_policy_never_branches():
    pol = make_policy(RolloutConfig(policy="trajectory", total_rollouts=5), V)
    t, rng = traj_with([1.0] * 6, initial=0.5), np.random.default_rng(0)
    assert pol.initial_samples == 5 and pol.topk_entropy == 0 and pol.lookahead_tokens == 0
    assert pol.on_segment_end(t, 0, 0, rng) is None and pol.on_lookahead(t, 0, 5, rng) is None
    assert pol.refill(3) == 0 and rng.random() == np.random.default_rng(0).random()  # nothing drawn
    assert pol.initial_entropy(t, 0) == pytest.approx(1.0)


@pytest.mark.parametrize("reading", ["threshold", "stochastic"])
def test_paper_policy_decides_on_the_k_tokens_after_the_result(reading):
    cfg = RolloutConfig(policy="arpo", total_rollouts=8, initial_rollouts=3, entropy_tokens=2, base_probability=0.3,
                        entropy_weight=0.5, threshold=0.5, paper_decision=reading)
    pol = make_policy(cfg, V)
    assert pol.initial_samples == 3 and pol.lookahead_tokens == 2 and pol.topk_entropy == 0
    t = traj_with([0.1, 0.3, 2.0, 1.0, 9.0], initial=0.2)
    assert pol.initial_entropy(t, 0) == pytest.approx(0.2)  # mean of the first k = 2 model tokens
    d = pol.on_lookahead(t, slot=0, start=5, rng=np.random.default_rng(4))
    u = np.random.default_rng(4).random()  # one draw under both readings
    p = min(max(0.3 + 0.5 * (1.5 - 0.2), 0.0), 1.0)
    assert (d["prompt_index"], d["uid"], d["position"], d["granted"]) == (2, 7, 8, 0)
    assert d["entropy"] == pytest.approx(1.5) and d["initial_entropy"] == 0.2 and d["uniform"] == u
    assert d["delta_h"] == pytest.approx(1.3, rel=1e-6) and d["probability"] == pytest.approx(p, rel=1e-6)
    assert d["branch"] == (p > 0.5 if reading == "threshold" else u < p)
    assert pol.on_segment_end(t, 0, 0, np.random.default_rng(0)) is None
    assert pol.refill(5) == 5  # all missing at once


def test_release_policy_decides_at_the_call_with_its_own_entropy():
    cfg = RolloutConfig(policy="arpo_release", total_rollouts=8, initial_rollouts=2, entropy_tokens=2,
                        entropy_topk=10, entropy_weight=0.2, threshold=0.5)
    pol = make_policy(cfg, V)
    assert pol.initial_samples == 2 and pol.topk_entropy == 10 and pol.lookahead_tokens == 0
    t = traj_with([0.0] * 5, topk=[1.0, 2.0, 3.0, 4.0, 50.0])
    h0 = pol.initial_entropy(t, slot=3)
    assert h0 == pytest.approx(3.0 / math.log(V)) and pol.stale_initial == {}  # summed over k = 2, / ln|V|
    t.initial_entropy = h0
    d = pol.on_segment_end(t, slot=3, start=5, rng=np.random.default_rng(1))
    u, delta = np.random.default_rng(1).random(), 4.0 / math.log(V)
    assert d["entropy"] == pytest.approx(7.0 / math.log(V)) and d["delta_h"] == pytest.approx(delta)
    assert d["uniform"] == u and d["branch"] == (min(max(u - 0.2 * delta, 0), 1) <= 0.5)
    assert d["probability"] == pytest.approx(0.5 + 0.2 * delta, rel=1e-6)
    assert pol.on_lookahead(t, 3, 5, np.random.default_rng(0)) is None and pol.refill(5) == 1  # serial refill


def test_release_stale_baseline_table():
    cfg = RolloutConfig(policy="arpo_release", entropy_tokens=2, stale_entropy_baseline=True)
    pol = make_policy(cfg, V)
    a, b = traj_with([0.0] * 4, topk=[1.0, 1.0, 5.0, 5.0]), traj_with([0.0] * 4, topk=[2.0, 2.0, 5.0, 5.0])
    a.initial_entropy = pol.initial_entropy(a, slot=0)
    b.initial_entropy = pol.initial_entropy(b, slot=0)  # same slot later: the table keeps the first value
    assert pol.stale_initial == {0: a.initial_entropy} and b.initial_entropy != a.initial_entropy
    d = pol.on_segment_end(b, slot=0, start=5, rng=np.random.default_rng(0))
    assert d["initial_entropy"] == a.initial_entropy  # the stale value, not b's own
    d = pol.on_segment_end(b, slot=1, start=5, rng=np.random.default_rng(0))
    assert d["initial_entropy"] == b.initial_entropy  # a slot not in the table: its own
