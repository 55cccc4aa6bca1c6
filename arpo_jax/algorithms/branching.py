"""Entropy-based branching math (ARPO adaptive rollout) as pure numpy functions.

The rollout's branching policies (``arpo_jax.rollout.policies``) call these on the per-token
entropies the sampler already returned with each decode chunk, so a decision costs no device
call. DESIGN.md §1 (paper) and §2 (release) describe the two rules.

Segment entropy H, over the first k model tokens (mask 1) of a segment:

* paper: the mean of the exact per-token entropies (``mean_entropy``);
* release: the sum of the per-token top-k entropies (-Σ p log p over the 10 largest log-probs,
  computed by the sampler), divided by ln|V| (``release_entropy``).

Decision rules, on ΔH, the change of H relative to the trajectory's initial entropy H_initial:

* paper: ΔH = normalise(H - H_initial) (``entropy_delta``); P = clip(α + β·ΔH, 0, 1)
  (``paper_branch_probability``); branch iff P > τ (threshold reading) or iff U < P for
  U ~ Uniform[0, 1) (stochastic reading: the branch rate is P) (``paper_branch_decisions``).
* release: ΔH = H - H_initial (both already divided by ln|V|); branch iff
  clip(U - β·ΔH, 0, 1) <= τ (``release_branch_decisions``), i.e. with probability
  clip(τ + β·ΔH, 0, 1) (``release_branch_probability``).

Arithmetic is float32 (as on an accelerator); every function works elementwise on arrays.
"""

from __future__ import annotations

import math

import numpy as np

ENTROPY_NORMALIZATIONS = ("none", "log_vocab", "initial")


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


# ----------------------------------------------------------------------------- entropies


def first_model_tokens(values, mask, k: int) -> np.ndarray:
    """The first ``k`` entries of ``values`` [T] where ``mask`` [T] is set (model tokens)."""
    return np.asarray(values)[np.asarray(mask, bool)][:k]


def mean_entropy(entropies, mask, k: int) -> float:
    """Paper H: mean exact entropy of the first k model tokens; 0 if there are none."""
    vals = first_model_tokens(entropies, mask, k)
    return float(vals.mean()) if len(vals) else 0.0


def release_entropy(topk_entropies, mask, k: int, vocab_size: int) -> float:
    """Release H: Σ of the first k model tokens' top-k entropies / ln|V|; 0 if there are none."""
    return float(first_model_tokens(topk_entropies, mask, k).sum() / math.log(vocab_size))


def entropy_delta(entropy, initial_entropy, normalization: str = "none", vocab_size: int | None = None,
                  eps: float = 1e-6) -> np.ndarray:
    """Paper ΔH = normalise(H - H_initial): "none" (plain difference), "log_vocab" (divided
    by ln|V|), "initial" (relative change (H - H0) / (|H0| + eps))."""
    h, h0 = _f32(entropy), _f32(initial_entropy)
    delta = h - h0
    if normalization == "none":
        return delta
    if normalization == "log_vocab":
        if vocab_size is None:
            raise ValueError("normalization 'log_vocab' needs vocab_size")
        return delta / np.float32(math.log(vocab_size))
    if normalization == "initial":
        return delta / (np.abs(h0) + np.float32(eps))
    raise ValueError(f"normalization must be one of {ENTROPY_NORMALIZATIONS}, got {normalization!r}")


# ----------------------------------------------------------------------------- decisions


def paper_branch_probability(delta_h, alpha: float, beta: float) -> np.ndarray:
    """P = clip(α + β·ΔH, 0, 1)."""
    return np.clip(np.float32(alpha) + np.float32(beta) * _f32(delta_h), np.float32(0), np.float32(1))


def paper_branch_decisions(probability, uniform, tau: float, stochastic: bool) -> np.ndarray:
    """Threshold reading: branch iff P > τ (``uniform`` unused); stochastic: iff U < P."""
    p = np.asarray(probability, np.float64)
    return np.asarray(uniform, np.float64) < p if stochastic else p > tau


def release_branch_decisions(uniform, delta_h, beta: float, tau: float) -> np.ndarray:
    """The release rule on given uniforms: p = clip(U - β·ΔH, 0, 1); branch iff p <= τ."""
    p = np.clip(_f32(uniform) - np.float32(beta) * _f32(delta_h), np.float32(0), np.float32(1))
    return p <= np.float32(tau)


def release_branch_probability(delta_h, beta: float, tau: float) -> np.ndarray:
    """Branch probability the release rule induces for U ~ Uniform[0, 1): clip(τ + β·ΔH, 0, 1)
    (τ >= 1 always branches)."""
    p = np.clip(np.float32(tau) + np.float32(beta) * _f32(delta_h), np.float32(0), np.float32(1))
    return np.where(tau >= 1.0, np.float32(1), p)
