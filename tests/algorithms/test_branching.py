"""Branching math (the functions the rollout's policies call), against straightforward numpy
references: segment entropies on masked buffers, ΔH, both decision rules (exact decisions on
given uniforms, seeded branch rates vs their formulas with binomial bounds), and the release
rule replayed on recorded log-probs."""

import math
import random

import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.algorithms import branching as br
from arpo_jax.sampling.processing import topk_entropy

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


# ----------------------------------------------------------------------------- entropies


def test_segment_entropies_count_the_first_k_model_tokens():
    ent = [0.5, 9.0, 1.5, 2.5, 9.0, 3.5, 4.5]
    mask = [1, 0, 1, 1, 0, 1, 1]  # tool-result tokens (mask 0) are skipped
    np.testing.assert_array_equal(br.first_model_tokens(ent, mask, 3), [0.5, 1.5, 2.5])
    assert br.mean_entropy(ent, mask, 3) == pytest.approx(1.5)
    assert br.mean_entropy(ent, mask, 100) == pytest.approx(np.mean([0.5, 1.5, 2.5, 3.5, 4.5]))
    assert br.mean_entropy(ent, [0] * 7, 3) == 0.0 and br.mean_entropy([], [], 3) == 0.0
    assert br.release_entropy(ent, mask, 3, 1000) == pytest.approx(4.5 / math.log(1000))  # summed, not averaged
    assert br.release_entropy([], [], 20, 1000) == 0.0


def test_entropy_delta_normalisations():
    h, h0 = np.array([3.0, 1.0]), np.array([2.0, 2.0])
    np.testing.assert_allclose(br.entropy_delta(h, h0), [1.0, -1.0])
    expected = np.array([1.0, -1.0]) / math.log(1000)
    np.testing.assert_allclose(br.entropy_delta(h, h0, "log_vocab", vocab_size=1000), expected, rtol=1e-6)
    np.testing.assert_allclose(br.entropy_delta(h, h0, "initial"), [0.5, -0.5], rtol=1e-5)
    assert br.entropy_delta(1.0, 2.0).dtype == np.float32
    with pytest.raises(ValueError):
        br.entropy_delta(h, h0, "log_vocab")
    with pytest.raises(ValueError):
        br.entropy_delta(h, h0, "max")


# ----------------------------------------------------------------------------- decisions


def test_paper_rule_probability_and_threshold_reading():
    alpha, beta, tau = 0.4, 0.2, 0.5
    p = br.paper_branch_probability(DELTA_H, alpha, beta)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, np.clip(alpha + beta * DELTA_H, 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(br.paper_branch_decisions(p, np.zeros_like(p), tau, stochastic=False),
                                  [float(x) > tau for x in p])


def test_paper_stochastic_rate_follows_alpha_plus_beta_delta_h():
    alpha, beta, tau = 0.5, 0.2, 0.5
    p = br.paper_branch_probability(DELTA_H, alpha, beta)
    u = np.random.default_rng(0).random((len(DELTA_H), N_DRAWS))
    decisions = br.paper_branch_decisions(p[:, None], u, tau, stochastic=True)
    np.testing.assert_array_equal(decisions, u < p[:, None])
    assert_rate_matches(decisions, np.clip(alpha + beta * DELTA_H, 0, 1))
    with pytest.raises(AssertionError):  # a wrong slope is detected by the same bound
        assert_rate_matches(decisions, np.clip(alpha + 0.1 * DELTA_H, 0, 1))


def release_decision_reference(entropy_now, entropy_init, beta, tau, u):
    prob = u - beta * (entropy_now - entropy_init)
    prob = max(0.0, min(1.0, prob))
    return not prob > tau, prob  # the release skips the fork iff prob > branch_probability


def test_release_rule_rate_is_clip_tau_plus_beta_delta_h():
    beta, tau = 0.2, 0.5
    u = np.random.default_rng(1).random((len(DELTA_H), N_DRAWS))
    decisions = br.release_branch_decisions(u, DELTA_H[:, None], beta, tau)
    ref = [[release_decision_reference(d, 0.0, beta, tau, x)[0] for x in row[:200]] for d, row in zip(DELTA_H, u)]
    np.testing.assert_array_equal(decisions[:, :200], ref)
    expected = np.clip(tau + beta * DELTA_H, 0, 1)
    assert_rate_matches(decisions, expected)
    np.testing.assert_allclose(br.release_branch_probability(DELTA_H, beta, tau), expected, rtol=1e-6)
    assert np.all(br.release_branch_probability(DELTA_H, beta, 1.0) == 1.0)
    # With β = 0.2 and |ΔH| < 1 the release's branching is close to a coin flip.
    assert np.all(np.abs(expected[np.abs(DELTA_H) < 1] - 0.5) <= 0.2 + 1e-9)


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


def recorded_trajectories(num_traj=12, num_segments=3, vocab_size=3000, seed=0):
    """Full-vocabulary log-probs of each model token of each segment (as the sampler sees them),
    segments of various lengths, separated by 5 tool-result positions."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 1, 4, 19, 20, 21, 33], size=(num_traj, num_segments))
    lengths[:, 0] = np.maximum(lengths[:, 0], 5)
    records = []
    for b in range(num_traj):
        segs = []
        for s in range(num_segments):
            logits = rng.normal(0, rng.uniform(0.5, 4.0), (lengths[b, s], vocab_size))  # peaked to flat
            shifted = logits - logits.max(-1, keepdims=True)
            segs.append((shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).astype(np.float32))
        records.append(segs)
    return records, lengths


def test_release_rule_replayed_on_recorded_logprobs():
    """The sampler's per-token top-10 entropy, laid out in a trajectory buffer with tool results
    between the segments, gives the release's segment entropies and decisions."""
    vocab_size, beta, tau, obs = 3000, 0.2, 0.5, 5
    records, lengths = recorded_trajectories(vocab_size=vocab_size)
    num_traj, num_segments = lengths.shape
    ours, ref = np.zeros((num_traj, num_segments)), np.zeros((num_traj, num_segments))
    for b in range(num_traj):
        per_token, mask, spans = [], [], []
        for s, logp in enumerate(records[b]):
            start = len(mask)
            per_token += np.asarray(topk_entropy(jnp.asarray(logp), 10)).tolist() if len(logp) else []
            mask += [1] * len(logp)
            spans.append((start, len(mask)))
            per_token, mask = per_token + [0.0] * obs, mask + [0] * obs  # the tool result after the segment
            top10 = [sorted(map(float, row), reverse=True)[:10] for row in logp]
            ref[b, s] = release_entropy_reference(top10, vocab_size)
        for s, (start, end) in enumerate(spans):
            ours[b, s] = br.release_entropy(per_token[start:end], mask[start:end], 20, vocab_size)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert np.all(ref[lengths == 0] == 0.0) and np.all(ref[lengths > 0] > 0)

    # Decisions after segments 1.., against the trajectory's first-segment entropy, with the
    # uniforms the release would draw from Python's `random`.
    rnd = random.Random(1234)
    uniforms = np.array([[rnd.random() for _ in range(num_segments - 1)] for _ in range(num_traj)])
    ref_decisions, ref_probs = np.zeros(uniforms.shape, bool), np.zeros(uniforms.shape)
    for b in range(num_traj):
        for s in range(1, num_segments):
            ref_decisions[b, s - 1], ref_probs[b, s - 1] = release_decision_reference(
                ref[b, s], ref[b, 0], beta, tau, uniforms[b, s - 1])
    decisions = br.release_branch_decisions(uniforms, ours[:, 1:] - ours[:, :1], beta, tau)
    decided = np.abs(ref_probs - tau) > 1e-5  # exclude float32-vs-float64 ties (none expected)
    np.testing.assert_array_equal(decisions[decided], ref_decisions[decided])
    assert decided.mean() > 0.9 and 0 < ref_decisions.mean() < 1
