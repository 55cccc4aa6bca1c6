"""The optax policy update on a tiny model: exact micro-batching, learning, NaN skipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arpo_jax.algorithms.losses import PolicyLossConfig
from arpo_jax.models import create_model, get_preset
from arpo_jax.training.update import (OptimizerConfig, PolicyUpdater, cached_optimizer, make_policy_batch,
                                      policy_loss_fn, score_tokens, sequence_logprobs)
from arpo_jax.algorithms.accumulation import accumulate_gradients, split_micro_batches

CFG = get_preset("qwen2.5-0.5b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=8)

# jitted, as the trainer runs them: eagerly, each op of the model compiles on its own, for each shape
_logprobs_jit = jax.jit(sequence_logprobs, static_argnames=("temperature", "vocab_size", "logits_chunk"))
_logits_jit = jax.jit(lambda model, tokens: model(tokens))


def _batch(model, seed=0, b=4, t=12):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 64, (b, t))
    lengths = rng.integers(7, t + 1, b)
    attn = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = attn.copy()
    loss_mask[:, :4] = 0  # prompt
    loss_mask[:, 6] = 0  # a tool-result token
    old_lp, _ = _logprobs_jit(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(attn))
    adv = np.repeat(rng.normal(size=(b, 1)), t, 1) * loss_mask
    return make_policy_batch(tokens, attn, loss_mask, np.asarray(old_lp) * loss_mask, adv)


def test_sequence_logprobs_match_manual_softmax():
    model = create_model(CFG, seed=0)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 6)), jnp.int32)
    lp, ent = _logprobs_jit(model, tokens, jnp.ones_like(tokens), temperature=0.7)
    logits = np.asarray(_logits_jit(model, tokens), np.float64) / 0.7
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref_lp = np.log(np.take_along_axis(p[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0])
    ref_ent = -(p * np.log(p)).sum(-1)[:, :-1]
    np.testing.assert_allclose(np.asarray(lp)[:, 1:], ref_lp, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent)[:, 1:], ref_ent, atol=1e-5)
    assert np.all(np.asarray(lp)[:, 0] == 0)


def test_micro_batched_gradients_equal_full_batch():
    model = create_model(CFG, seed=1)
    graphdef, params = nnx.split(model)
    batch = _batch(model)
    loss_fn = policy_loss_fn(graphdef, PolicyLossConfig(), 1.0)
    whole = jax.tree.map(lambda x: x[None], batch)
    micro = jax.tree.map(lambda x: x.reshape((4, 1) + x.shape[1:]), batch)
    accumulate = jax.jit(accumulate_gradients, static_argnums=0)
    g1, o1 = accumulate(loss_fn, params, whole)
    g4, o4 = accumulate(loss_fn, params, micro)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert float(o1.denominator) == float(o4.denominator) == float(np.sum(np.asarray(batch.loss_mask)))


def _updater(model, opt_cfg: OptimizerConfig, **kw):
    """(the RL loop's PolicyUpdater, params, a fresh optimizer state) for ``model``."""
    graphdef, params = nnx.split(model)
    updater = PolicyUpdater(graphdef, cached_optimizer(opt_cfg), **kw)
    return updater, params, updater.init(params)


def test_repeated_steps_lower_the_loss_and_change_the_policy():
    model = create_model(CFG, seed=2)
    batch = _batch(model, seed=3)
    before = np.asarray(_logits_jit(model, batch.tokens))
    updater, params, opt_state = _updater(model, OptimizerConfig(lr=3e-3, weight_decay=0.0), num_micro=2)
    losses = []
    for _ in range(8):
        params, opt_state, m = updater.apply(params, opt_state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 1e-3, losses
    assert np.abs(np.asarray(_logits_jit(nnx.merge(updater.graphdef, params), batch.tokens)) - before).max() > 1e-3
    lp, _ = updater.score(params, batch.tokens, batch.attention_mask)  # micro-batched, as the RL loop scores
    ref, _ = _logprobs_jit(nnx.merge(updater.graphdef, params), batch.tokens, batch.attention_mask)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(ref), atol=1e-5)


def test_non_finite_loss_skips_the_step():
    model = create_model(CFG, seed=4)
    batch = _batch(model, seed=5)
    updater, params, opt_state = _updater(model, OptimizerConfig(lr=1e-2))
    params_before = jax.tree.map(np.asarray, params)
    bad = make_policy_batch(batch.tokens, batch.attention_mask, batch.loss_mask, batch.old_logprobs,
                            batch.advantages.at[0, 8].set(jnp.nan))
    params, opt_state, metrics = updater.apply(params, opt_state, bad)
    assert int(metrics["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert int(updater.apply(params, opt_state, batch)[2]["skipped"]) == 0


def test_batch_not_divisible_is_clear():
    model = create_model(CFG, seed=0)
    updater, params, opt_state = _updater(model, OptimizerConfig(), num_micro=3)
    with pytest.raises(ValueError, match="does not split into 3 micro-batches"):
        updater.apply(params, opt_state, _batch(model))


def test_chunked_logprobs_and_vocab_mask_match_full_computation():
    """logits_chunk computes the same values (and gradients) without [B, T, V] logits; the
    vocab mask reproduces the sampler's distribution over the tokenizer's ids only."""
    model = create_model(CFG, seed=2)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, (2, 13)), jnp.int32)
    attn = jnp.ones_like(tokens)
    full = _logprobs_jit(model, tokens, attn, vocab_size=50)
    chunked = _logprobs_jit(model, tokens, attn, vocab_size=50, logits_chunk=5)
    for a, b in zip(full, chunked):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    logits = np.asarray(_logits_jit(model, tokens), np.float64)[:, :, :50]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = np.take_along_axis(logp[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(full[0])[:, 1:], ref, atol=1e-5)

    graphdef, params = nnx.split(model)
    batch = _batch(model)
    grads = [jax.jit(jax.grad(lambda p: policy_loss_fn(graphdef, PolicyLossConfig(), 1.0, 60, c)(p, batch).loss_sum))(
        params) for c in (0, 4)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_lr_schedules_against_formulas(schedule):
    from arpo_jax.training.update import lr_schedule

    cfg = OptimizerConfig(lr=0.01, warmup_steps=10, schedule=schedule, total_steps=100, decay_steps=30)
    lr = [float(lr_schedule(cfg)(i)) for i in range(101)]
    np.testing.assert_allclose(lr[:11], 0.001 * np.arange(11), atol=1e-9)  # linear warmup
    if schedule == "constant":
        np.testing.assert_allclose(lr[10:], 0.01)
    elif schedule == "cosine":
        want = [0.005 * (1 + np.cos(np.pi * (i - 10) / 90)) for i in range(10, 101)]
        np.testing.assert_allclose(lr[10:], want, atol=1e-7)
    else:  # stable until step 70, then linear to 0 at 100
        np.testing.assert_allclose(lr[10:71], 0.01)
        np.testing.assert_allclose(lr[70:], 0.01 * (1 - np.arange(31) / 30), atol=1e-9)
    with pytest.raises(ValueError, match="optimizer.schedule"):
        OptimizerConfig(schedule="linear")


def test_wsd_optimizer_applies_the_schedule():
    """SGD-like check: with AdamW the first update's size is lr (|Adam step| = 1 for a constant gradient)."""
    from arpo_jax.training.update import make_optimizer

    cfg = OptimizerConfig(lr=0.1, weight_decay=0.0, grad_clip=0.0, schedule="wsd", total_steps=10, decay_steps=5)
    opt = make_optimizer(cfg)
    params = jnp.zeros(())
    state = opt.init(params)
    steps = []
    for _ in range(10):
        upd, state = opt.update(jnp.ones(()), state, params)
        steps.append(-float(upd))
    np.testing.assert_allclose(steps, [0.1] * 6 + [0.08, 0.06, 0.04, 0.02], rtol=1e-4)


def test_micro_batches_are_strided_and_scoring_them_keeps_the_row_order():
    """Micro-batch k holds rows k, k + K, …: with rows sharded in blocks (one per process),
    every micro-batch has rows on every shard. Scoring in micro-batches gives the full result."""
    rows = jnp.arange(8)[:, None] * jnp.ones((1, 3), jnp.int32)
    assert split_micro_batches(rows, 4)[:, :, 0].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    model = create_model(CFG, seed=2)
    graphdef, params = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 64, (8, 10)), jnp.int32)
    attn = jnp.asarray(np.arange(10)[None] < np.arange(3, 11)[:, None], jnp.int32)
    full = score_tokens(params, tokens, attn, graphdef=graphdef)
    split = score_tokens(params, tokens, attn, graphdef=graphdef, num_micro=4)
    for a, b in zip(split, full):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_batch_scope_entropy_advantage_is_exact_over_micro_batches():
    """AEPO's global-batch entropy z-score: the update's first pass makes 4 micro-batches give
    the one-batch step; the micro-batch scope (as released) does not."""
    model = create_model(CFG, seed=3)
    graphdef, params = nnx.split(model)
    batch = _batch(model, seed=3)
    steps = {}
    for scope in ("batch", "micro_batch"):
        loss_cfg = PolicyLossConfig(entropy_advantage=True, entropy_advantage_scope=scope)
        for k in (1, 4):
            updater = PolicyUpdater(graphdef, cached_optimizer(OptimizerConfig(lr=1e-2)), loss_cfg, num_micro=k)
            p = jax.tree.map(jnp.copy, params)
            _, _, metrics = updater.apply(p, updater.init(p), batch)
            steps[scope, k] = float(metrics["loss"]), float(metrics["grad_norm"])
    np.testing.assert_allclose(steps["batch", 1], steps["batch", 4], rtol=1e-5)
    np.testing.assert_allclose(steps["batch", 1], steps["micro_batch", 1], rtol=1e-4)  # one micro-batch: one scope
    assert abs(steps["micro_batch", 4][0] - steps["batch", 4][0]) > 1e-5
