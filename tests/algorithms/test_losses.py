"""Policy loss vs a per-token numpy PPO (incl. dual clip), aggregation modes, KL, entropy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.algorithms import losses


def numpy_ppo_token_loss(lp, old, adv, eps_low, eps_high, dual_c):
    """Token by token, written out as in the PPO / dual-clip papers (verl's semantics)."""
    out = np.zeros(lp.shape)
    clipped = np.zeros(lp.shape, bool)
    dual = np.zeros(lp.shape, bool)
    for idx in np.ndindex(lp.shape):
        r = np.exp(np.clip(lp[idx] - old[idx], -20, 20))
        a = adv[idx]
        unclipped, clip_term = -a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high)
        loss = max(unclipped, clip_term)
        clipped[idx] = clip_term > unclipped
        if dual_c is not None and a < 0:
            dual[idx] = loss > -a * dual_c
            loss = min(loss, -a * dual_c)
        out[idx] = loss
    return out, clipped, dual


def numpy_aggregate(token_loss, mask, mode, norm=4096.0):
    rows = [b for b in range(mask.shape[0]) if mask[b].sum() > 0]
    if mode == "token-mean":
        return (token_loss * mask).sum() / mask.sum()
    if mode == "seq-mean-token-sum":
        return np.mean([(token_loss[b] * mask[b]).sum() for b in rows])
    if mode == "seq-mean-token-mean":
        return np.mean([(token_loss[b] * mask[b]).sum() / mask[b].sum() for b in rows])
    return np.mean([(token_loss[b] * mask[b]).sum() / norm for b in rows])


def make_batch(seed=0, B=5, T=11):
    rng = np.random.default_rng(seed)
    old = rng.normal(-1.5, 0.7, (B, T))
    lp = old + rng.normal(0, 0.6, (B, T))  # ratios spread well past 0.8 / 1.2 and 3
    lp[0, 0] = old[0, 0] + 2.0  # ratio e^2 > 3 with negative advantage: dual clip
    adv = np.repeat(rng.normal(0, 1.0, (B, 1)), T, 1) + rng.normal(0, 0.2, (B, T))
    adv[0, 0] = -1.0
    lengths = np.array([T, 3, 7, 0, 9])[:B]
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    mask[2, 4] = 0.0  # a tool-result token inside the sequence
    return lp, old, adv, mask


@pytest.mark.parametrize("mode", losses.LOSS_AGG_MODES)
@pytest.mark.parametrize("eps_low, eps_high, dual_c", [(0.2, 0.2, 3.0), (0.2, 0.28, None), (0.1, 0.3, 2.0)])
def test_policy_loss_matches_numpy_ppo(mode, eps_low, eps_high, dual_c):
    lp, old, adv, mask = make_batch()
    cfg = losses.PolicyLossConfig(clip_eps_low=eps_low, clip_eps_high=eps_high, dual_clip_c=dual_c, loss_agg_mode=mode)
    out = losses.policy_loss(*(jnp.asarray(x, jnp.float32) for x in (lp, old, adv, mask)), cfg)
    ref_tok, ref_clip, ref_dual = numpy_ppo_token_loss(lp, old, adv, eps_low, eps_high, dual_c)
    expected = numpy_aggregate(ref_tok, mask, mode)
    assert float(out.loss_sum / out.denominator) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    metrics = losses.summarize_loss_output(out)
    assert float(metrics["clip_fraction"]) == pytest.approx((ref_clip * mask).sum() / mask.sum(), rel=1e-6)
    assert float(metrics["dual_clip_fraction"]) == pytest.approx((ref_dual * mask).sum() / mask.sum(), rel=1e-6)
    if dual_c is not None:
        assert ref_dual.any() and (ref_dual * mask).sum() > 0  # the batch exercises the dual clip
    ratio = np.exp(lp - old)
    assert float(metrics["approx_kl"]) == pytest.approx(((old - lp) * mask).sum() / mask.sum(), rel=1e-5)
    assert float(metrics["ratio_max"]) == pytest.approx(ratio[mask > 0].max(), rel=1e-5)
    assert float(metrics["ratio_min"]) == pytest.approx(ratio[mask > 0].min(), rel=1e-5)


def test_token_loss_regimes_by_hand():
    # (ratio, advantage) -> loss with eps 0.2, c 3
    cases = [(1.5, 1.0, -1.2), (0.5, 1.0, -0.5), (0.5, -1.0, 0.8), (1.5, -1.0, 1.5), (5.0, -1.0, 3.0), (1.0, 0.0, 0.0)]
    r = jnp.log(jnp.array([c[0] for c in cases]))
    a = jnp.array([c[1] for c in cases])
    loss, clipped, dual, _ = losses.ppo_clipped_token_loss(r, jnp.zeros_like(r), a)
    np.testing.assert_allclose(loss, [c[2] for c in cases], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(clipped, [True, False, True, False, False, False])
    np.testing.assert_array_equal(dual, [False, False, False, False, True, False])


@pytest.mark.parametrize("estimator", losses.KL_ESTIMATORS)
def test_kl_and_entropy_terms(estimator):
    lp, old, adv, mask = make_batch(1)
    ref = old + 0.3 * np.random.default_rng(2).normal(size=old.shape)
    ent = np.abs(np.random.default_rng(3).normal(size=old.shape))
    cfg = losses.PolicyLossConfig(kl_coef=0.05, kl_estimator=estimator, entropy_coef=0.01)
    lp_, old_, adv_, mask_, ref_, ent_ = (jnp.asarray(x, jnp.float32) for x in (lp, old, adv, mask, ref, ent))
    out = losses.policy_loss(lp_, old_, adv_, mask_, cfg, ref_logprobs=ref_, entropy=ent_)
    d = lp - ref
    kl = {"k1": d, "k2": 0.5 * d**2, "k3": np.clip(np.exp(-d) + d - 1, -10, 10)}[estimator]
    tok, _, _ = numpy_ppo_token_loss(lp, old, adv, 0.2, 0.2, 3.0)
    expected = numpy_aggregate(tok + 0.05 * kl - 0.01 * ent, mask, "token-mean")
    assert float(out.loss_sum / out.denominator) == pytest.approx(expected, rel=1e-5)
    metrics = losses.summarize_loss_output(out)
    assert float(metrics["kl_loss"]) == pytest.approx(numpy_aggregate(kl, mask, "token-mean"), rel=1e-5)
    assert float(metrics["entropy_loss"]) == pytest.approx(numpy_aggregate(ent, mask, "token-mean"), rel=1e-5)
    with pytest.raises(ValueError, match="ref_logprobs"):
        losses.policy_loss(*(jnp.asarray(x) for x in (lp, old, adv, mask)), cfg)


def test_policy_loss_jits_with_static_config_and_grad_is_finite():
    lp, old, adv, mask = make_batch(5)
    cfg = losses.PolicyLossConfig(loss_agg_mode="seq-mean-token-mean")

    def mean_loss(lp_, old_, adv_, mask_):
        out = losses.policy_loss(lp_, old_, adv_, mask_, cfg)
        return out.loss_sum / out.denominator

    args = [jnp.asarray(x, jnp.float32) for x in (lp, old, adv, mask)]
    val, grad = jax.jit(jax.value_and_grad(mean_loss))(*args)
    assert np.isfinite(float(val)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)  # masked tokens get no gradient
    # Clipped tokens (ratio outside the trust region in the improving direction) get no gradient.
    _, clipped, dual, _ = losses.ppo_clipped_token_loss(*args[:3])
    assert np.all(np.asarray(grad)[np.asarray(clipped | dual)] == 0.0)


def test_config_validation():
    with pytest.raises(ValueError, match="loss_agg_mode"):
        losses.PolicyLossConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="dual_clip_c"):
        losses.PolicyLossConfig(dual_clip_c=0.5)
    assert dataclasses.replace(losses.PolicyLossConfig(), dual_clip_c=None).dual_clip_c is None


def numpy_logprobs_entropy(logits, targets, temperature):
    z = logits.astype(np.float64) / temperature
    z = z - np.max(z, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp_all = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
        p = np.exp(logp_all)
        ent = -np.sum(np.where(p > 0, p * logp_all, 0.0), axis=-1)
    return np.take_along_axis(logp_all, targets[..., None], -1)[..., 0], ent


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_and_entropy_match_numpy(temperature):
    rng = np.random.default_rng(0)
    B, T, V = 3, 5, 257
    logits = rng.normal(0, 4.0, (B, T, V)).astype(np.float32)
    logits[0] += 1e4  # large offset: needs log-sum-exp
    logits[1, 0, :] = 0.0  # uniform row: entropy ln V
    logits[2, 1, 10:] = -np.inf  # masked vocabulary
    targets = rng.integers(0, 10, (B, T))
    lp, ent = losses.token_logprobs_and_entropy(jnp.asarray(logits), jnp.asarray(targets), temperature)
    ref_lp, ref_ent = numpy_logprobs_entropy(logits, targets, temperature)
    assert lp.dtype == jnp.float32 and ent.dtype == jnp.float32
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent, ref_ent, rtol=1e-4, atol=1e-4)
    assert float(ent[1, 0]) == pytest.approx(np.log(V), rel=1e-5)
    # bf16 logits are upcast: the result equals the fp32 computation on the rounded logits.
    logits16 = jnp.asarray(logits[1:2]).astype(jnp.bfloat16)
    lp16, ent16 = losses.token_logprobs_and_entropy(logits16, jnp.asarray(targets[1:2]), temperature)
    ref_lp16, ref_ent16 = numpy_logprobs_entropy(np.asarray(logits16.astype(jnp.float32)), targets[1:2], temperature)
    np.testing.assert_allclose(lp16, ref_lp16, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent16, ref_ent16, rtol=1e-4, atol=1e-4)
