"""AEPO (Dong et al., arXiv 2510.14545; BEYOND.md §1) maths as pure functions.

Shapes: B sequences, T response tokens.

Rollout side (numpy, host; the ``aepo`` branching policy calls these):

* ``premonitor_initial_samples``: entropy pre-monitoring (§1.3), the number m of a prompt's k
  trajectories that start as global samples: m = clip(floor(k·σ(β·(H_root − H̄_tool))) + 1, 1, k).
* ``aepo_branch_decisions`` / ``aepo_branch_probability``: the branch rule with the
  consecutive-branch penalty (§1.4): branch iff clip((U + w·ΔH)·max(0, 1 − c·l), 0, 1) ≥ τ.
* ``consecutive_run``: l, the number of consecutive steps with a branch before a step.

Update side (jnp; ``losses.policy_loss`` calls these when ``entropy_advantage`` is on):

* ``entropy_moments`` / ``merge_moments`` / ``entropy_zscore``: z-score of the current policy's
  token entropy over the loss tokens of a scope, from (count, mean, M2), so that a global-batch
  z-score is exact when micro-batch moments are merged (``accumulation.batch_moments``).
* ``entropy_balanced_advantages``: Ã_t = Â_t·(1 + α·sg(z_t)) (§1.6).

The gradient-preserving clip (§1.5) is ``losses.ppo_clipped_token_loss(clip_mode=...)``.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


# ----------------------------------------------------------------------------- rollout


def premonitor_initial_samples(root_entropy, tool_entropy, k: int, beta: float = 0.5) -> np.ndarray:
    """Global samples per prompt from entropy pre-monitoring (release: β = 0.5 hard-coded).

    m = clip(floor(k·σ(β·(H_root − H̄_tool))) + 1, 1, k); elementwise on arrays. The other k − m
    trajectories come from branching.
    """
    gap = np.asarray(root_entropy, np.float64) - np.asarray(tool_entropy, np.float64)
    sigma = 1.0 / (1.0 + np.exp(-beta * gap))
    return np.clip(np.floor(k * sigma).astype(np.int64) + 1, 1, k)


def penalty_factor(consecutive, slope: float = 0.05) -> np.ndarray:
    """max(0, 1 − slope·l): the consecutive-branch penalty (release slope 0.05, hard-coded)."""
    return np.maximum(np.float32(0), np.float32(1) - np.float32(slope) * np.asarray(consecutive, np.float32))


def aepo_branch_decisions(uniform, delta_h, consecutive, weight: float, tau: float, slope: float = 0.05
                          ) -> np.ndarray:
    """The released rule on given uniforms: p = clip((U + w·ΔH)·max(0, 1 − slope·l), 0, 1);
    branch iff p ≥ τ. At l = 0 and τ = 0.5 this is ARPO's release rule."""
    u, dh = np.asarray(uniform, np.float32), np.asarray(delta_h, np.float32)
    p = np.clip((u + np.float32(weight) * dh) * penalty_factor(consecutive, slope), np.float32(0), np.float32(1))
    return p >= np.float32(tau)


def aepo_branch_probability(delta_h, consecutive, weight: float, tau: float, slope: float = 0.05) -> np.ndarray:
    """The branch probability the rule induces for U ~ Uniform[0, 1):
    clip(1 − τ/f + w·ΔH, 0, 1) with f = max(0, 1 − slope·l) > 0; for f = 0: 1 if τ ≤ 0 else 0."""
    f = penalty_factor(consecutive, slope).astype(np.float64)
    dh = np.asarray(delta_h, np.float64)
    safe = np.where(f > 0, f, 1.0)
    p = np.clip(1.0 - tau / safe + weight * dh, 0.0, 1.0)
    return np.where(tau <= 0, 1.0, np.where(f > 0, p, 0.0))


def consecutive_run(branched_steps: Iterable[int], step: int) -> int:
    """l at ``step``: how many of the steps step − 1, step − 2, … in a row had a branch."""
    done = set(branched_steps)
    n = 0
    while step - 1 - n in done:
        n += 1
    return n


# ----------------------------------------------------------------------------- update


def entropy_moments(entropy: Array, weights: Array) -> Array:
    """[3] = (n, mean, M2): weighted count Σw, mean and sum of squared deviations Σw·(H − mean)²
    of the token entropies with weight w (loss mask × token weights), float32, gradient stopped.
    Computed in two passes relative to the largest entropy, so equal entropies give M2 exactly
    0; micro-batches combine exactly with ``merge_moments`` (no Σw·H² − n·mean² cancellation)."""
    w = weights.astype(jnp.float32)
    h = jax.lax.stop_gradient(entropy).astype(jnp.float32)
    n = jnp.sum(w)
    ref = jnp.max(jnp.where(w > 0, h, -jnp.inf))
    ref = jnp.where(jnp.isfinite(ref), ref, 0.0)
    mean_d = jnp.sum(w * (h - ref)) / jnp.maximum(n, 1e-8)
    m2 = jnp.sum(w * (h - ref - mean_d) ** 2)
    return jnp.stack([n, ref + mean_d, m2])


def merge_moments(a: Array, b: Array) -> Array:
    """The (n, mean, M2) of two disjoint token sets from theirs (Chan, Golub and LeVeque's
    parallel update); an empty set (n = 0) leaves the other unchanged."""
    na, ma, m2a = a[0], a[1], a[2]
    nb, mb, m2b = b[0], b[1], b[2]
    n = na + nb
    delta = mb - ma
    frac = jnp.where(n > 0, nb / jnp.maximum(n, 1e-8), 0.0)
    return jnp.stack([n, ma + delta * frac, m2a + m2b + delta * delta * na * frac])


def _std_or_one(n: Array, var: Array) -> Array:
    std = jnp.sqrt(jnp.maximum(var, 0.0))
    return jnp.where((n > 1) & (std > 0), std, 1.0)


def entropy_zscore(entropy: Array, weights: Array, moments: Array | None = None) -> Array:
    """z = (H − mean) / std over the tokens of ``weights``, unbiased (n − 1) std; std 0 (or
    fewer than two tokens) → 1, as the release does. Gradient stopped. [B, T].

    moments: [3] ``entropy_moments`` of a larger scope (merged over micro-batches); None: this
    batch's own.
    """
    h = jax.lax.stop_gradient(entropy).astype(jnp.float32)
    if moments is None:
        moments = entropy_moments(entropy, weights)
    n, mean, m2 = moments[0], moments[1], moments[2]
    return (h - mean) / _std_or_one(n, m2 / jnp.maximum(n - 1.0, 1e-8))


def entropy_balanced_advantages(advantages: Array, entropy: Array, weights: Array, alpha: float = 0.2,
                                moments: Array | None = None) -> Array:
    """AEPO's entropy-aware advantage Ã_t = Â_t·(1 + α·sg(z_t)).

    Args:
      advantages: [B, T]; entropy: [B, T] current policy's token entropy; weights: [B, T] loss
        mask (× token weights): the tokens the z-score is taken over.
      alpha: α (release 0.2, hard-coded).
      moments: [3] ``entropy_moments`` of a larger scope (e.g. the whole mini-batch, from a first
        pass); None: this batch's own (the release: its micro-batch).

    Returns:
      [B, T] float32.
    """
    z = entropy_zscore(entropy, weights, moments)
    return advantages.astype(jnp.float32) * (1.0 + alpha * z)
