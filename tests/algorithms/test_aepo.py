"""AEPO maths (BEYOND.md §1.3–1.6): the gradient-preserving clip, the entropy-aware advantage
and its two scopes (exact over micro-batches with a first pass), the penalised branch rule,
pre-monitoring and the branch-concentration metric, against plain references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.algorithms import aepo, branching, losses, tree
from arpo_jax.algorithms.accumulation import accumulate_gradients, batch_moments, split_micro_batches

EPS_H = 0.28  # asymmetric bounds, so the upper one is identifiable


def _ppo(logp, old, adv, mode):
    return losses.ppo_clipped_token_loss(logp, old, adv, clip_eps_low=0.2, clip_eps_high=EPS_H, dual_clip_c=3.0,
                                         clip_mode=mode)[0]


def test_gradient_preserving_clip_value_and_gradient():
    rng = np.random.default_rng(0)
    old = jnp.asarray(rng.normal(-2.0, 0.5, (6, 40)), jnp.float32)
    logp = old + jnp.asarray(rng.normal(0.0, 0.4, (6, 40)), jnp.float32)  # ratios from ~0.3 to ~3
    adv = jnp.asarray(rng.normal(0.0, 1.0, (6, 40)), jnp.float32)
    std = _ppo(logp, old, adv, "standard")
    gp = _ppo(logp, old, adv, "gradient_preserving")
    np.testing.assert_array_equal(std, gp)  # same value everywhere
    g_std = jax.grad(lambda lp: _ppo(lp, old, adv, "standard").sum())(logp)  # d l_t / d log pi_t
    g_gp = jax.grad(lambda lp: _ppo(lp, old, adv, "gradient_preserving").sum())(logp)
    ratio, a = np.exp(np.asarray(logp - old)), np.asarray(adv)
    upper = (a > 0) & (ratio > 1 + EPS_H)
    assert upper.sum() > 10 and (~upper).sum() > 10
    np.testing.assert_allclose(np.asarray(g_gp)[upper], -a[upper] * (1 + EPS_H), rtol=1e-5)
    assert np.all(np.asarray(g_std)[upper] == 0)
    np.testing.assert_array_equal(np.asarray(g_gp)[~upper], np.asarray(g_std)[~upper])
    lower = (a < 0) & (ratio < 0.8)  # the lower side keeps zero gradient
    assert lower.sum() > 0 and np.all(np.asarray(g_gp)[lower] == 0)


def np_entropy_adv(adv, ent, mask, alpha):
    h = ent[mask > 0].astype(np.float64)
    std = h.std(ddof=1) if len(h) > 1 else 0.0
    std = std if std > 0 else 1.0
    return adv * (1 + alpha * (ent - h.mean()) / std)


def test_entropy_balanced_advantages_match_numpy_and_stop_gradient():
    rng = np.random.default_rng(1)
    adv = rng.normal(size=(4, 9)).astype(np.float32)
    ent = rng.gamma(2.0, 0.7, size=(4, 9)).astype(np.float32)
    mask = (rng.random((4, 9)) < 0.7).astype(np.float32)
    got = aepo.entropy_balanced_advantages(jnp.asarray(adv), jnp.asarray(ent), jnp.asarray(mask), 0.2)
    np.testing.assert_allclose(got, np_entropy_adv(adv, ent, mask, 0.2), rtol=1e-5, atol=1e-6)
    const = aepo.entropy_balanced_advantages(jnp.asarray(adv), jnp.full((4, 9), 1.3), jnp.asarray(mask), 0.2)
    np.testing.assert_allclose(const, adv, rtol=1e-6)  # std 0 -> 1, z 0
    g = jax.grad(lambda e: aepo.entropy_balanced_advantages(jnp.asarray(adv), e, jnp.asarray(mask)).sum())(
        jnp.asarray(ent))
    assert np.all(np.asarray(g) == 0)


def test_policy_loss_uses_entropy_advantages_only_when_enabled():
    rng = np.random.default_rng(2)
    lp = jnp.asarray(rng.normal(-1.0, 0.3, (3, 8)), jnp.float32)
    old = lp + jnp.asarray(rng.normal(0.0, 0.3, (3, 8)), jnp.float32)
    adv = rng.normal(size=(3, 8)).astype(np.float32)
    ent = rng.gamma(2.0, 0.5, size=(3, 8)).astype(np.float32)
    mask = jnp.ones((3, 8))
    on = losses.PolicyLossConfig(entropy_advantage=True, entropy_advantage_alpha=0.5)
    got = losses.policy_loss(lp, old, jnp.asarray(adv), mask, on, entropy=jnp.asarray(ent))
    ref_adv = jnp.asarray(np_entropy_adv(adv, ent, np.ones((3, 8)), 0.5), jnp.float32)
    ref = losses.policy_loss(lp, old, ref_adv, mask, losses.PolicyLossConfig())
    np.testing.assert_allclose(got.loss_sum, ref.loss_sum, rtol=1e-5)
    plain = losses.policy_loss(lp, old, jnp.asarray(adv), mask, losses.PolicyLossConfig(), entropy=jnp.asarray(ent))
    assert abs(float(plain.loss_sum - got.loss_sum)) > 1e-3
    with pytest.raises(ValueError, match="needs the current policy's entropy"):
        losses.policy_loss(lp, old, jnp.asarray(adv), mask, on)
    batch = losses.PolicyLossConfig(entropy_advantage=True, entropy_advantage_scope="batch")
    with pytest.raises(ValueError, match="entropy_moments"):
        losses.policy_loss(lp, old, jnp.asarray(adv), mask, batch, entropy=jnp.asarray(ent))
    with pytest.raises(ValueError, match="loss.clip_mode must be one of"):
        losses.PolicyLossConfig(clip_mode="soft")
    with pytest.raises(ValueError, match="loss.entropy_advantage_scope must be one of"):
        losses.PolicyLossConfig(entropy_advantage_scope="step")


def _toy_problem():
    """A linear policy over V = 7 tokens: logits = x @ W; 8 sequences of 5 tokens."""
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(0, 0.8, (6, 7)), jnp.float32)}
    batch = dict(x=jnp.asarray(rng.normal(size=(8, 5, 6)), jnp.float32),
                 y=jnp.asarray(rng.integers(0, 7, (8, 5)), jnp.int32),
                 adv=jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
                 mask=jnp.asarray(rng.random((8, 5)) < 0.8, jnp.float32))
    batch["old"] = losses.token_logprobs_and_entropy(batch["x"] @ params["w"], batch["y"])[0] + 0.1
    return params, batch


def _loss_fn(cfg, moments=None):
    def fn(p, mb):
        lp, ent = losses.token_logprobs_and_entropy(mb["x"] @ p["w"], mb["y"])
        return losses.policy_loss(lp, mb["old"], mb["adv"], mb["mask"], cfg, entropy=ent, entropy_moments=moments)
    return fn


def _moments(p, mb):
    return aepo.entropy_moments(losses.token_logprobs_and_entropy(mb["x"] @ p["w"], mb["y"])[1], mb["mask"])


def test_batch_scope_is_exact_over_micro_batches_with_a_first_pass():
    params, batch = _toy_problem()
    cfg = losses.PolicyLossConfig(entropy_advantage=True, entropy_advantage_scope="batch",
                                  clip_mode="gradient_preserving")
    full_m = _moments(params, batch)

    @jax.jit
    def run(params, micro, moments):  # the update with a first pass: moments, then the loss
        first = batch_moments(_moments, params, micro, aepo.merge_moments)
        return first, accumulate_gradients(_loss_fn(cfg, first if moments is None else moments), params, micro)

    _, (g_full, out_full) = run(params, split_micro_batches(batch, 1), full_m)
    micro = split_micro_batches(batch, 4)
    m, (g4, out4) = run(params, micro, None)
    np.testing.assert_allclose(m, full_m, rtol=1e-5)
    np.testing.assert_allclose(out4.loss_sum / out4.denominator, out_full.loss_sum / out_full.denominator, rtol=1e-5)
    np.testing.assert_allclose(g4["w"], g_full["w"], rtol=1e-4, atol=1e-6)
    per_micro = losses.PolicyLossConfig(entropy_advantage=True, clip_mode="gradient_preserving")
    g_mb, _ = jax.jit(lambda p, mb: accumulate_gradients(_loss_fn(per_micro), p, mb))(params, micro)  # release
    assert np.abs(np.asarray(g_mb["w"] - g_full["w"])).max() > 1e-4


def test_branch_rule_against_its_definition():
    rng = np.random.default_rng(4)
    u, dh = rng.random(500), rng.normal(0, 1.5, 500)
    l = rng.integers(0, 25, 500)
    for slope, tau in ((0.05, 0.5), (0.3, 0.3), (0.05, 0.8)):
        got = aepo.aepo_branch_decisions(u, dh, l, 0.2, tau, slope)
        ref = [min(max((a + 0.2 * d) * max(0.0, 1 - slope * c), 0.0), 1.0) >= tau for a, d, c in zip(u, dh, l)]
        np.testing.assert_array_equal(got, ref)
    grid = (np.arange(20000) + 0.5) / 20000  # the induced probability = share of uniforms that branch
    for d, c, tau in ((0.0, 0, 0.5), (0.7, 3, 0.5), (-1.0, 5, 0.3), (2.0, 12, 0.6), (0.4, 20, 0.5)):
        share = aepo.aepo_branch_decisions(grid, d, c, 0.2, tau).mean()
        assert aepo.aepo_branch_probability(d, c, 0.2, tau) == pytest.approx(share, abs=1e-3)
    dh = np.linspace(-3, 3, 13)  # no penalty, tau 0.5: exactly ARPO's release probability
    np.testing.assert_allclose(aepo.aepo_branch_probability(dh, 0, 0.2, 0.5),
                               branching.release_branch_probability(dh, 0.2, 0.5), atol=1e-6)
    assert not aepo.aepo_branch_decisions(grid, 3.0, 20, 0.2, 0.5).any()  # l >= 20 at slope 0.05: never


def test_premonitor_initial_samples():
    k = 12
    for h_root, h_tool in ((1.0, 1.0), (2.5, 0.4), (0.1, 3.0), (40.0, 0.0), (0.0, 40.0)):
        ref = min(max(math.floor(k / (1 + math.exp(-0.5 * (h_root - h_tool)))) + 1, 1), k)
        assert aepo.premonitor_initial_samples(h_root, h_tool, k) == ref
    assert aepo.premonitor_initial_samples(1.0, 1.0, k) == 7  # floor(k/2) + 1 at equal entropies
    assert aepo.premonitor_initial_samples(40.0, 0.0, k) == k and aepo.premonitor_initial_samples(0.0, 40.0, k) == 1
    np.testing.assert_array_equal(aepo.premonitor_initial_samples([0.0, 9.0], [0.0, 0.0], 4, beta=2.0), [3, 4])


def test_consecutive_run():
    assert aepo.consecutive_run([], 3) == 0
    assert aepo.consecutive_run([0, 1, 2], 3) == 3 and aepo.consecutive_run([0, 2], 3) == 1
    assert aepo.consecutive_run([0, 1], 3) == 0 and aepo.consecutive_run([5], 0) == 0


def test_branch_concentration_by_hand():
    # prompt 0: 0 sources 3 (1, 2, 4), 1 sources 1 (3), 4 sources 1 (6): top-3 = 5 of 5
    # prompt 1: 5 sources 2, 7 sources 1, 8 sources 1, 9 sources 1: top-3 = 4 of 5; prompt 2: none
    parent = np.array([-1, 0, 0, 1, 0, -1, 4, 5, 5, 7, 8, 9, -1])
    groups = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 2])
    got = tree.branch_concentration(parent, groups)
    np.testing.assert_allclose(got[:2], [1.0, 0.8])
    assert np.isnan(got[2])
    np.testing.assert_allclose(tree.branch_concentration(parent, groups, top=1)[:2], [0.6, 0.4])
