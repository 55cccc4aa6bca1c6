"""Entropy-based branching decisions (ARPO adaptive rollout) as pure functions of entropies.

Two rules, both over ΔH, the change of a segment's entropy relative to the trajectory's
initial entropy H_initial:

* **paper**: ΔH = normalise(H_t - H_initial); P = clip(α + β·ΔH, 0, 1). Read deterministically,
  branch iff P > τ (``paper_threshold``); read stochastically, branch with probability P, i.e.
  iff U < P for U ~ Uniform(0, 1) (``paper_stochastic``): over many seeded decisions the branch
  rate follows α + β·ΔH.
* **release** (the authors' code, DESIGN.md §2): H = sum over the first 20 tokens of a segment
  of -Σ p log p over each token's top-10 log-probs, divided by ln|V| (each of H_segment and
  H_initial is normalised this way; ΔH is their plain difference). Then
  p = clip(U - β·ΔH, 0, 1), branch iff p <= τ; the induced branch probability is
  clip(τ + β·ΔH, 0, 1).

Normalisation of ΔH (``BranchingConfig.entropy_normalization``): "none" (entropies are already
normalised, e.g. ``release_segment_entropy``), "log_vocab" (divide the difference by ln|V|,
which is what the released code does to raw entropies; the paper text speaks of normalising by
the vocabulary), or "initial" (relative change (H - H0) / H0).

Randomness is explicit: a JAX PRNG key (``jax.random.uniform``) or, for host-side rollouts, a
``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

BRANCH_RULES = ("release", "paper_stochastic", "paper_threshold")
ENTROPY_NORMALIZATIONS = ("none", "log_vocab", "initial")


@dataclasses.dataclass(frozen=True)
class BranchingConfig:
    """ARPO rollout knobs; defaults are the paper runs (DESIGN.md §2).

    total_rollouts (M) per prompt; initial_rollouts (N) global samples; branches_per_source (Z)
    forks per source per round (the release's beam_size - 1); threshold (τ); entropy_weight
    (β); base_probability (α, paper rule); entropy_tokens (k) tokens measured per segment;
    entropy_topk log-probs per token (release rule).
    """

    rule: str = "release"
    total_rollouts: int = 16
    initial_rollouts: int = 8
    branches_per_source: int = 1
    threshold: float = 0.5
    entropy_weight: float = 0.2
    base_probability: float = 0.5
    entropy_tokens: int = 20
    entropy_topk: int = 10
    entropy_normalization: str = "none"

    def __post_init__(self):
        if self.rule not in BRANCH_RULES:
            raise ValueError(f"rule must be one of {BRANCH_RULES}, got {self.rule!r}")
        if self.entropy_normalization not in ENTROPY_NORMALIZATIONS:
            raise ValueError(f"entropy_normalization must be one of {ENTROPY_NORMALIZATIONS}")
        if not 1 <= self.initial_rollouts <= self.total_rollouts:
            raise ValueError("need 1 <= initial_rollouts (N) <= total_rollouts (M)")
        if self.branches_per_source < 0 or self.entropy_tokens < 1 or self.entropy_topk < 1:
            raise ValueError("branches_per_source must be >= 0, entropy_tokens and entropy_topk >= 1")


# ----------------------------------------------------------------------------- entropies


def release_topk_entropy(topk_logprobs: Array) -> Array:
    """-Σ_k exp(l_k) l_k over the last axis, without renormalising the top-k probabilities.

    Entries equal to -inf (absent / padding) contribute 0. vLLM may return k + 1 entries (the
    sampled token when outside the top k); pass that extra column or -inf.

    Args:
      topk_logprobs: [..., k].

    Returns:
      [...] float32.
    """
    lp = topk_logprobs.astype(jnp.float32)
    finite = jnp.isfinite(lp)
    safe = jnp.where(finite, lp, 0.0)
    return -jnp.sum(jnp.where(finite, jnp.exp(safe) * safe, 0.0), axis=-1)


def release_segment_entropy(topk_logprobs: Array, lengths: Array, vocab_size: int, max_tokens: int = 20) -> Array:
    """The release's segment entropy: sum over the first min(max_tokens, length) tokens of
    ``release_topk_entropy``, divided by ln(vocab_size). A segment of length 0 scores 0.

    Args:
      topk_logprobs: [B, T, k] top-k log-probs of each generated token of the segment.
      lengths: [B] number of generated tokens in the segment.
      vocab_size: |V| (the tokenizer's vocabulary size in the release).
      max_tokens: 20 in the release.

    Returns:
      [B] float32.
    """
    per_token = release_topk_entropy(topk_logprobs)  # [B, T]
    positions = jnp.arange(per_token.shape[1])[None, :]
    counted = (positions < jnp.minimum(lengths, max_tokens)[:, None]).astype(jnp.float32)
    return jnp.sum(per_token * counted, axis=-1) / math.log(vocab_size)


def mean_segment_entropy(token_entropy: Array, lengths: Array, max_tokens: int = 20) -> Array:
    """Mean exact entropy (as the sampler returns it) of the first min(max_tokens, length)
    tokens of each segment: [B, T], [B] -> [B] (0 for empty segments). Paper rule's H_t."""
    positions = jnp.arange(token_entropy.shape[1])[None, :]
    counted = (positions < jnp.minimum(lengths, max_tokens)[:, None]).astype(jnp.float32)
    return jnp.sum(token_entropy * counted, axis=-1) / jnp.maximum(counted.sum(-1), 1.0)


def entropy_delta(
    entropy: Array,
    initial_entropy: Array,
    normalization: str = "none",
    vocab_size: int | None = None,
    eps: float = 1e-6,
) -> Array:
    """ΔH = normalise(H - H_initial), see the module docstring for the normalisations."""
    delta = entropy - initial_entropy
    if normalization == "none":
        return delta
    if normalization == "log_vocab":
        if vocab_size is None:
            raise ValueError("normalization 'log_vocab' needs vocab_size")
        return delta / math.log(vocab_size)
    if normalization == "initial":
        return delta / (jnp.abs(initial_entropy) + eps)
    raise ValueError(f"normalization must be one of {ENTROPY_NORMALIZATIONS}, got {normalization!r}")


# ----------------------------------------------------------------------------- decisions


def paper_branch_probability(delta_h: Array, alpha: float, beta: float) -> Array:
    """P = clip(α + β·ΔH, 0, 1)."""
    return jnp.clip(alpha + beta * delta_h, 0.0, 1.0)


def threshold_branch_decisions(probability: Array, tau: float) -> Array:
    """Deterministic reading of the paper: branch iff P > τ."""
    return probability > tau


def sample_branch_decisions(key: jax.Array, probability: Array) -> Array:
    """Stochastic reading: branch iff U < P, U ~ Uniform[0, 1) from ``key``; rate = P."""
    return jax.random.uniform(key, jnp.shape(probability)) < probability


def sample_branch_decisions_np(rng: np.random.Generator, probability: np.ndarray) -> np.ndarray:
    """Host-side twin of ``sample_branch_decisions`` with a numpy Generator."""
    probability = np.asarray(probability)
    return rng.random(probability.shape) < probability


def release_branch_decisions(uniform: Array, delta_h: Array, beta: float, tau: float) -> Array:
    """The release rule on given uniforms: p = clip(U - β·ΔH, 0, 1); branch iff p <= τ."""
    return jnp.clip(uniform - beta * delta_h, 0.0, 1.0) <= tau


def release_branch_probability(delta_h: Array, beta: float, tau: float) -> Array:
    """Branch probability the release rule induces for U ~ Uniform[0, 1): clip(τ + β·ΔH, 0, 1)
    (for τ in [0, 1); τ >= 1 always branches)."""
    return jnp.where(tau >= 1.0, 1.0, jnp.clip(tau + beta * delta_h, 0.0, 1.0))


def branch_decisions(config: BranchingConfig, key: jax.Array, delta_h: Array) -> Array:
    """Branch / no-branch for each candidate under ``config.rule``; ``delta_h`` from
    ``entropy_delta``. ``key`` is unused by "paper_threshold". Returns bool, shape of delta_h."""
    if config.rule == "release":
        uniform = jax.random.uniform(key, jnp.shape(delta_h))
        return release_branch_decisions(uniform, delta_h, config.entropy_weight, config.threshold)
    probability = paper_branch_probability(delta_h, config.base_probability, config.entropy_weight)
    if config.rule == "paper_stochastic":
        return sample_branch_decisions(key, probability)
    return threshold_branch_decisions(probability, config.threshold)


# ----------------------------------------------------------------------------- budget


def cap_branches_to_budget(
    requested: Array, prompt_ids: Array, prompt_counts: Array, max_per_prompt: int
) -> tuple[Array, Array]:
    """Grant requested branches first-come (in candidate order) without exceeding M per prompt.

    Candidate c (a source trajectory) asks for requested[c] new branches of prompt
    prompt_ids[c], which already has prompt_counts[prompt_ids[c]] trajectories. Candidates of
    one prompt are served in index order until the prompt reaches ``max_per_prompt`` (as the
    release serves sources in slot order). With Z = 1 and ``requested`` = the branch decisions,
    this reproduces the release exactly; with Z > 1 the release stops drawing for a source once
    the budget is hit, which can differ from capping already-drawn decisions.

    Args:
      requested: [C] int >= 0.
      prompt_ids: [C] int in [0, P).
      prompt_counts: [P] int current trajectories per prompt.
      max_per_prompt: M.

    Returns:
      (granted [C] int32, new_counts [P] int32), with new_counts <= max(M, prompt_counts).
    """
    requested = jnp.maximum(requested.astype(jnp.int32), 0)
    prompt_ids = prompt_ids.astype(jnp.int32)
    prompt_counts = prompt_counts.astype(jnp.int32)
    C = requested.shape[0]
    same = prompt_ids[:, None] == prompt_ids[None, :]  # [C, C]
    earlier = jnp.arange(C)[None, :] < jnp.arange(C)[:, None]  # [C, C]: j before i
    requested_before = jnp.sum(jnp.where(same & earlier, requested[None, :], 0), axis=1)  # [C]
    room = jnp.maximum(max_per_prompt - prompt_counts[prompt_ids], 0)  # [C]
    granted = jnp.clip(room - requested_before, 0, requested)
    new_counts = prompt_counts.at[prompt_ids].add(granted)
    return granted, new_counts
