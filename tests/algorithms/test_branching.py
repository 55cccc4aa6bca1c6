"""Branching rules: seeded branch rates vs their formulas (binomial bounds), the release rule
re-run on recorded top-k log-probs, and the per-prompt budget."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arpo_jax.algorithms import branching as br

N_DRAWS = 20_000
Z_BOUND = 5.0  # |rate - p| <= 5 sigma: a false alarm has probability < 1e-6 per value


def assert_rate_matches(decisions, expected_p):
    """decisions [G, N] bool, expected_p [G]: binomial 5-sigma bound per row."""
    decisions, expected_p = np.asarray(decisions), np.asarray(expected_p, np.float64)
    rate = decisions.mean(axis=1)
    n = decisions.shape[1]
    bound = Z_BOUND * np.sqrt(expected_p * (1 - expected_p) / n) + 1.0 / n
    assert np.all(np.abs(rate - expected_p) <= bound), (rate, expected_p, bound)


DELTA_H = np.array([-3.0, -2.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.0, 3.0])  # covers both clip ends


def test_paper_stochastic_rate_follows_alpha_plus_beta_delta_h():
    alpha, beta = 0.5, 0.2
    p = br.paper_branch_probability(jnp.asarray(DELTA_H), alpha, beta)
    np.testing.assert_allclose(p, np.clip(alpha + beta * DELTA_H, 0, 1), rtol=1e-6)
    p_grid = jnp.broadcast_to(p[:, None], (len(DELTA_H), N_DRAWS))
    assert_rate_matches(br.sample_branch_decisions(jax.random.key(0), p_grid), np.clip(alpha + beta * DELTA_H, 0, 1))
    rng = np.random.default_rng(0)
    assert_rate_matches(br.sample_branch_decisions_np(rng, np.asarray(p_grid)), np.clip(alpha + beta * DELTA_H, 0, 1))
    # A wrong slope is detected by the same bound (the test is not a tautology).
    with pytest.raises(AssertionError):
        assert_rate_matches(br.sample_branch_decisions(jax.random.key(0), p_grid), np.clip(alpha + 0.1 * DELTA_H, 0, 1))


def test_seeded_decisions_are_reproducible():
    p = jnp.full((1000,), 0.5)
    a = br.sample_branch_decisions(jax.random.key(7), p)
    b = br.sample_branch_decisions(jax.random.key(7), p)
    c = br.sample_branch_decisions(jax.random.key(8), p)
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a) != np.asarray(c))


def test_release_rule_rate_is_clip_tau_plus_beta_delta_h():
    beta, tau = 0.2, 0.5
    delta = jnp.broadcast_to(jnp.asarray(DELTA_H)[:, None], (len(DELTA_H), N_DRAWS))
    cfg = br.BranchingConfig(rule="release", entropy_weight=beta, threshold=tau)
    decisions = br.branch_decisions(cfg, jax.random.key(1), delta)
    expected = np.clip(tau + beta * DELTA_H, 0, 1)
    assert_rate_matches(decisions, expected)
    np.testing.assert_allclose(br.release_branch_probability(jnp.asarray(DELTA_H), beta, tau), expected, rtol=1e-6)
    # With β = 0.2 and |ΔH| < 1 the release's branching is close to a coin flip.
    assert np.all(np.abs(expected[np.abs(DELTA_H) < 1] - 0.5) <= 0.2 + 1e-9)


def test_dispatch_paper_rules():
    delta = jnp.asarray(DELTA_H)
    cfg = br.BranchingConfig(rule="paper_threshold", base_probability=0.4, entropy_weight=0.2, threshold=0.5)
    threshold = br.branch_decisions(cfg, jax.random.key(0), delta)
    np.testing.assert_array_equal(threshold, 0.4 + 0.2 * DELTA_H > 0.5)
    cfg = br.BranchingConfig(rule="paper_stochastic", base_probability=0.3, entropy_weight=0.25)
    grid = jnp.broadcast_to(delta[:, None], (len(DELTA_H), N_DRAWS))
    assert_rate_matches(br.branch_decisions(cfg, jax.random.key(3), grid), np.clip(0.3 + 0.25 * DELTA_H, 0, 1))


def test_entropy_delta_normalisations():
    h, h0 = jnp.array([3.0, 1.0]), jnp.array([2.0, 2.0])
    np.testing.assert_allclose(br.entropy_delta(h, h0), [1.0, -1.0])
    expected = np.array([1.0, -1.0]) / math.log(1000)
    np.testing.assert_allclose(br.entropy_delta(h, h0, "log_vocab", vocab_size=1000), expected, rtol=1e-6)
    np.testing.assert_allclose(br.entropy_delta(h, h0, "initial"), [0.5, -0.5], rtol=1e-5)
    with pytest.raises(ValueError):
        br.entropy_delta(h, h0, "log_vocab")


# ----------------------------------------------------------------------- release rule replay


def release_entropy_reference(topk_per_token, vocab_size):
    """DESIGN.md §2 transcribed: top-10 log-probs of each of the first 20 tokens, -Σ p log p
    summed over all of them, divided by ln|V|; 0 for an empty segment."""
    logprobs = []
    for j in range(min(20, len(topk_per_token))):
        logprobs.extend(topk_per_token[j])
    if not logprobs:
        return 0.0
    return -sum(math.exp(l) * l for l in logprobs) / math.log(vocab_size)


def release_decision_reference(entropy_now, entropy_init, beta, tau, u):
    prob = u - beta * (entropy_now - entropy_init)
    prob = max(0.0, min(1.0, prob))
    return not prob > tau, prob  # the release skips the fork iff prob > branch_probability


def recorded_segments(num_traj=12, num_segments=3, vocab_size=3000, k=10, seed=0):
    """Top-k log-probs as a sampler would record them, for segments of various lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 1, 4, 19, 20, 21, 33], size=(num_traj, num_segments))
    lengths[:, 0] = np.maximum(lengths[:, 0], 5)
    records = []
    for b in range(num_traj):
        segs = []
        for s in range(num_segments):
            scale = rng.uniform(0.5, 4.0)  # peaked to flat distributions
            logits = rng.normal(0, scale, (lengths[b, s], vocab_size))
            shifted = logits - logits.max(-1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            segs.append(np.sort(logp, axis=-1)[:, ::-1][:, :k].astype(np.float32))
        records.append(segs)
    return records, lengths


def test_release_rule_replayed_on_recorded_logprobs():
    vocab_size, beta, tau = 3000, 0.2, 0.5
    records, lengths = recorded_segments(vocab_size=vocab_size)
    num_traj, num_segments = lengths.shape
    t_max = int(lengths.max())
    padded = np.full((num_traj, num_segments, t_max, 10), -np.inf, np.float32)
    for b in range(num_traj):
        for s in range(num_segments):
            padded[b, s, : lengths[b, s]] = records[b][s]
    flat = br.release_segment_entropy(jnp.asarray(padded.reshape(-1, t_max, 10)), jnp.asarray(lengths.reshape(-1)), vocab_size)
    ours = flat.reshape(num_traj, num_segments)
    ref = np.zeros((num_traj, num_segments))
    for b in range(num_traj):
        for s in range(num_segments):
            ref[b, s] = release_entropy_reference([list(map(float, row)) for row in records[b][s]], vocab_size)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert np.all(ref[lengths == 0] == 0.0) and np.all(ref[lengths > 0] > 0)

    # Decisions after segments 1.., against the trajectory's first-segment entropy, with the
    # uniforms the release would draw from Python's `random`.
    rnd = random.Random(1234)
    uniforms = np.array([[rnd.random() for _ in range(num_segments - 1)] for _ in range(num_traj)])
    ref_decisions, ref_probs = np.zeros(uniforms.shape, bool), np.zeros(uniforms.shape)
    for b in range(num_traj):
        for s in range(1, num_segments):
            decision, prob = release_decision_reference(ref[b, s], ref[b, 0], beta, tau, uniforms[b, s - 1])
            ref_decisions[b, s - 1], ref_probs[b, s - 1] = decision, prob
    delta = br.entropy_delta(ours[:, 1:], ours[:, :1])  # already /ln|V|: no further normalisation
    decisions = br.release_branch_decisions(jnp.asarray(uniforms, jnp.float32), delta, beta, tau)
    decided = np.abs(ref_probs - tau) > 1e-5  # exclude float32-vs-float64 ties (none expected)
    np.testing.assert_array_equal(np.asarray(decisions)[decided], ref_decisions[decided])
    assert decided.mean() > 0.9 and 0 < ref_decisions.mean() < 1


def test_release_topk_entropy_and_mean_segment_entropy():
    lp = jnp.log(jnp.array([[0.5, 0.25, 0.125], [1.0, 0.0, 0.0]]))
    expected = 0.5 * math.log(2) + 0.25 * math.log(4) + 0.125 * math.log(8)
    np.testing.assert_allclose(br.release_topk_entropy(lp), [expected, 0.0], rtol=1e-6)
    ent = jnp.array([[1.0, 2.0, 3.0, 100.0], [5.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(br.mean_segment_entropy(ent, jnp.array([4, 1]), max_tokens=3), [2.0, 5.0])


# ----------------------------------------------------------------------------------- budget


def budget_reference(requested, prompt_ids, counts, m):
    counts = list(counts)
    granted = []
    for r, p in zip(requested, prompt_ids):
        g = max(0, min(r, m - counts[p]))
        counts[p] += g
        granted.append(g)
    return granted, counts


def test_budget_by_hand():
    requested, prompt_ids, counts = jnp.array([1, 1, 1, 1, 2]), jnp.array([0, 0, 1, 0, 1]), jnp.array([14, 3])
    granted, counts = br.cap_branches_to_budget(requested, prompt_ids, counts, 16)
    np.testing.assert_array_equal(granted, [1, 1, 1, 0, 2])
    np.testing.assert_array_equal(counts, [16, 6])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=10, max_size=10),
    st.lists(st.integers(0, 18), min_size=4, max_size=4),
)
def test_budget_matches_sequential_reference(cands, counts):
    requested = [r for r, _ in cands]
    prompt_ids = [p for _, p in cands]
    granted, new_counts = _budget_jit(jnp.array(requested), jnp.array(prompt_ids), jnp.array(counts))
    ref_granted, ref_counts = budget_reference(requested, prompt_ids, counts, 16)
    np.testing.assert_array_equal(granted, ref_granted)
    np.testing.assert_array_equal(new_counts, ref_counts)
    assert np.all(np.asarray(new_counts) <= np.maximum(16, counts))


_budget_jit = jax.jit(lambda r, p, c: br.cap_branches_to_budget(r, p, c, 16))


def test_config_defaults_and_validation():
    cfg = br.BranchingConfig()
    assert (cfg.total_rollouts, cfg.initial_rollouts, cfg.branches_per_source) == (16, 8, 1)
    assert (cfg.threshold, cfg.entropy_weight, cfg.entropy_tokens, cfg.entropy_topk) == (0.5, 0.2, 20, 10)
    with pytest.raises(ValueError, match="rule"):
        br.BranchingConfig(rule="greedy")
    with pytest.raises(ValueError, match="initial_rollouts"):
        br.BranchingConfig(initial_rollouts=17)
