"""Micro-batched (sum, denominator) accumulation == one full batch, for losses and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.algorithms import accumulation, advantages, losses

B, T, D, V, K = 8, 12, 6, 17, 4  # K micro-batches of B // K sequences


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([12, 1, 5, 12, 3, 9, 2, 7])  # very uneven: mean of means != global mean
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    mask[0, 4:6] = 0.0  # a tool result
    batch = {
        "x": rng.normal(size=(B, T, D)).astype(np.float32),
        "targets": rng.integers(0, V, (B, T)),
        "old_logprobs": rng.normal(-2.8, 0.4, (B, T)).astype(np.float32),
        "ref_logprobs": rng.normal(-2.8, 0.4, (B, T)).astype(np.float32),
        "advantages": np.repeat(rng.normal(size=(B, 1)), T, 1).astype(np.float32),
        "mask": mask,
        "weights": rng.choice([1.0, 0.5, 0.25], (B, T)).astype(np.float32),
    }
    params = {"w": jnp.asarray(rng.normal(0, 0.3, (D, V)), jnp.float32), "b": jnp.zeros((V,), jnp.float32)}
    return params, jax.tree_util.tree_map(jnp.asarray, batch)


def make_loss_fn(cfg, use_weights):
    def loss_fn(params, batch):
        logits = jnp.einsum("btd,dv->btv", batch["x"], params["w"]) + params["b"]  # [B, T, V]
        logp, ent = losses.token_logprobs_and_entropy(logits, batch["targets"], temperature=0.9)
        return losses.policy_loss(
            logp,
            batch["old_logprobs"],
            batch["advantages"],
            batch["mask"],
            cfg,
            ref_logprobs=batch["ref_logprobs"],
            entropy=ent,
            token_weights=batch["weights"] if use_weights else None,
        )

    return loss_fn


@pytest.mark.parametrize(
    "cfg, use_weights",
    [
        (losses.PolicyLossConfig(), False),
        (losses.PolicyLossConfig(loss_agg_mode="seq-mean-token-sum", kl_coef=0.1, entropy_coef=0.01), False),
        (losses.PolicyLossConfig(loss_agg_mode="seq-mean-token-mean", clip_eps_high=0.28), False),
        (losses.PolicyLossConfig(kl_coef=0.05, kl_estimator="k1"), True),
    ],
)
def test_microbatched_gradients_equal_full_batch(cfg, use_weights):
    params, batch = tiny_batch()
    loss_fn = make_loss_fn(cfg, use_weights)

    def full_mean(p):
        out = loss_fn(p, batch)
        return out.loss_sum / out.denominator

    full_loss, full_grads = jax.jit(jax.value_and_grad(full_mean))(params)
    loss_fn_jit = jax.jit(loss_fn)
    micro = jax.tree_util.tree_map(lambda a: a.reshape(K, B // K, *a.shape[1:]), batch)
    grads, combined = jax.jit(accumulation.accumulate_gradients, static_argnums=0)(loss_fn, params, micro)
    assert float(combined.loss_sum / combined.denominator) == pytest.approx(float(full_loss), rel=1e-5, abs=1e-6)
    for name in params:
        np.testing.assert_allclose(grads[name], full_grads[name], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(full_grads["w"]))) > 1e-3  # the test is not vacuous
    # Stats accumulate exactly too.
    full_stats = losses.summarize_loss_output(loss_fn_jit(params, batch))
    micro_stats = losses.summarize_loss_output(combined)
    for key in ("clip_fraction", "approx_kl", "ratio_mean", "ratio_max", "ratio_min", "num_tokens"):
        assert float(micro_stats[key]) == pytest.approx(float(full_stats[key]), rel=1e-5, abs=1e-6)
    # Whereas averaging micro-batch means is wrong for uneven micro-batches.
    outs = [loss_fn_jit(params, jax.tree_util.tree_map(lambda a: a[k], micro)) for k in range(K)]
    naive = np.mean([float(o.loss_sum / o.denominator) for o in outs])
    sums, denoms = jnp.stack([o.loss_sum for o in outs]), jnp.stack([o.denominator for o in outs])
    exact = float(accumulation.global_mean(sums, denoms))
    assert exact == pytest.approx(float(full_loss), rel=1e-5, abs=1e-6)
    if cfg.loss_agg_mode == "token-mean":
        assert abs(naive - exact) > 1e-4


def test_hard_attribution_loss_accumulates_across_micro_batches():
    """Weights from hard attribution are per token, so splitting the tree's copies is still exact."""
    parent, branch_pos = jnp.array([-1, 0, 0, 1]), jnp.array([0, 3, 5, 4])
    mask = jnp.ones((4, 8))
    adv, w = advantages.hard_token_advantages(jnp.array([1.0, -1.0, 0.5, 0.0]), parent, branch_pos, mask)
    rng = np.random.default_rng(1)
    lp, old = (jnp.asarray(rng.normal(-1, 0.3, (4, 8)), jnp.float32) for _ in range(2))
    loss = jax.jit(losses.policy_loss)
    full = loss(lp, old, adv, mask, token_weights=w)
    halves = [slice(0, 2), slice(2, 4)]
    parts = [loss(lp[h], old[h], adv[h], mask[h], token_weights=w[h]) for h in halves]
    combined = losses.combine_loss_outputs(*parts)
    expected = float(full.loss_sum / full.denominator)
    assert float(combined.loss_sum / combined.denominator) == pytest.approx(expected, rel=1e-6)
