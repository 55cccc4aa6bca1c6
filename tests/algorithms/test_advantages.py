"""GRPO / Dr.GRPO / REINFORCE++ advantages against straightforward numpy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arpo_jax.algorithms import advantages as adv


def numpy_grpo(rewards, group_ids, eps=1e-6, normalize_std=True):
    """verl's compute_grpo_outcome_advantage, except singleton groups -> 0."""
    out = np.zeros(len(rewards))
    for g in np.unique(group_ids):
        idx = np.flatnonzero(group_ids == g)
        if len(idx) == 1:
            continue
        r = rewards[idx]
        centered = r - r.mean()
        out[idx] = centered / (r.std(ddof=1) + eps) if normalize_std else centered
    return out


def test_grpo_matches_numpy_interleaved_groups():
    rng = np.random.default_rng(0)
    group_ids = rng.permutation(np.repeat(np.array([7, 3, 11, 0]), 4))  # arbitrary ids, interleaved
    rewards = rng.choice([-1.0, 0.0, 0.3, 1.0, 1.1], size=group_ids.shape)
    got = adv.grpo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids))
    np.testing.assert_allclose(got, numpy_grpo(rewards, group_ids), rtol=1e-5, atol=1e-6)
    got = adv.grpo_advantages(jnp.asarray(rewards), jnp.asarray(group_ids), normalize_std=False)
    np.testing.assert_allclose(got, numpy_grpo(rewards, group_ids, normalize_std=False), rtol=1e-5, atol=1e-6)


def test_grpo_hand_values_unbiased_std_and_singletons():
    # group 0: [1, 0, 0, 0]: mean 0.25, unbiased std sqrt(0.75/3) = 0.5 -> [1.5, -0.5, -0.5, -0.5]
    rewards = jnp.array([1.0, 0.0, 0.0, 0.0, 5.0, 2.0, 2.0])
    group_ids = jnp.array([0, 0, 0, 0, 1, 2, 2])
    got = adv.grpo_advantages(rewards, group_ids)
    np.testing.assert_allclose(got, [1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0], rtol=1e-5, atol=1e-5)
    biased = adv.grpo_advantages(rewards, group_ids, unbiased_std=False)  # std = sqrt(0.1875)
    np.testing.assert_allclose(biased[0], 0.75 / np.sqrt(0.1875), rtol=1e-5)


def test_grpo_jits_with_group_ids_as_data():
    f = jax.jit(adv.grpo_advantages)
    a = f(jnp.array([1.0, 0.0, 1.0, 0.0]), jnp.array([0, 0, 1, 1]))
    b = f(jnp.array([1.0, 0.0, 1.0, 0.0]), jnp.array([0, 1, 0, 1]))  # same trace, other grouping
    np.testing.assert_allclose(a, [0.7071, -0.7071, 0.7071, -0.7071], atol=1e-3)
    np.testing.assert_allclose(b, [0.0, 0.0, 0.0, 0.0], atol=1e-6)


_GRPO_JIT = {flag: jax.jit(functools.partial(adv.grpo_advantages, normalize_std=flag)) for flag in (False, True)}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.floats(-5, 5, allow_nan=False)), min_size=1, max_size=12),
    st.booleans(),
)
def test_grpo_sums_to_zero_per_group(items, normalize_std):
    pad = 12 - len(items)  # fixed shape [12]: padding rows are singleton groups (ids 100+)
    group_ids = np.array([g for g, _ in items] + list(range(100, 100 + pad)))
    rewards = np.array([r for _, r in items] + [0.0] * pad, np.float32)
    got = np.asarray(_GRPO_JIT[normalize_std](jnp.asarray(rewards), jnp.asarray(group_ids)))
    for g in np.unique(group_ids):
        idx = group_ids == g
        r = rewards[idx].astype(np.float64)
        # float32 rounding of r - mean (~1 ulp of max|r| per entry), amplified by 1 / std.
        amplification = 1.0 / (r.std(ddof=1) + 1e-6) if normalize_std and len(r) > 1 else 1.0
        tol = 1e-5 * len(r) + 4 * len(r) * np.finfo(np.float32).eps * max(1.0, np.abs(r).max()) * amplification
        assert abs(got[idx].sum()) <= tol
    expected = numpy_grpo(rewards.astype(np.float64), group_ids, normalize_std=normalize_std)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)


def test_reinforce_pp_matches_verl_masked_whiten():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=6)
    group_ids = np.array([0, 0, 0, 1, 1, 1])
    mask = (rng.random((6, 9)) < 0.7).astype(np.float32)

    def whiten(values):
        n = mask.sum()
        mean = (values * mask).sum() / n
        var = (((values - mean) ** 2) * mask).sum() / n * n / (n - 1)
        return (values - mean) / np.sqrt(var + 1e-8) * mask

    got = adv.reinforce_pp_token_advantages(jnp.asarray(rewards), jnp.asarray(mask))
    np.testing.assert_allclose(got, whiten(rewards[:, None] * mask), rtol=1e-4, atol=1e-5)
    centered = numpy_grpo(rewards, group_ids, normalize_std=False)
    got = adv.reinforce_pp_token_advantages(jnp.asarray(rewards), jnp.asarray(mask), jnp.asarray(group_ids))
    np.testing.assert_allclose(got, whiten(centered[:, None] * mask), rtol=1e-4, atol=1e-5)


def test_grpo_equal_rewards_give_exactly_zero():
    # float32 (3 * 1.1) / 3 != 1.1: a naive mean would leave ~1e-7 / (0 + eps) ~ 0.1 advantages.
    rewards = jnp.array([1.1, 1.1, 1.1, 2.882193188867574, 2.882193188867574, 2.882193188867574, 0.0])
    got = adv.grpo_advantages(rewards, jnp.array([0, 0, 0, 1, 1, 1, 2]))
    np.testing.assert_array_equal(got, np.zeros(7))
