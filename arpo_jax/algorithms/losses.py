"""Policy loss (PPO clip + dual clip, verl semantics), KL and entropy terms, token log-probs.

Shapes: B sequences, T response tokens, V vocabulary.

The loss returns ``(loss_sum, denominator)`` instead of a mean: summing both over
micro-batches and dividing once gives exactly the full-batch loss (see ``accumulation``).
Statistics are returned the same way, as sums (or max/min) to be combined and divided at the
end with ``combine_loss_outputs`` / ``summarize_loss_output``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from arpo_jax.algorithms import aepo

Array = jnp.ndarray

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
CLIP_MODES = ("standard", "gradient_preserving")
ENTROPY_ADVANTAGE_SCOPES = ("micro_batch", "batch")


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Knobs of the policy loss; defaults are the paper's runs (GRPO, no KL, no entropy bonus).

    clip_eps_low / clip_eps_high: ratio clipped to [1 - low, 1 + high].
    dual_clip_c: for negative advantages the per-token loss is capped at -A * c (verl's
      ``clip_ratio_c``); None disables dual clip. Must be > 1.
    loss_agg_mode: "token-mean" (mean over all loss tokens of the global batch), "seq-mean-token-sum"
      (mean over sequences of per-sequence token sums), "seq-mean-token-mean" (mean over sequences
      of per-sequence token means) or "seq-mean-token-sum-norm" (Dr.GRPO: per-sequence token sum
      divided by the constant ``token_sum_norm``, mean over sequences).
    kl_coef, kl_estimator: penalty kl_coef * KL(pi || pi_ref) per token, estimator "k1"
      (log-ratio), "k2" (half squared log-ratio) or "k3" (verl's "low_var_kl"); 0 disables.
    entropy_coef: bonus -entropy_coef * H per token; 0 disables.
    log_ratio_clamp: log(pi / pi_old) is clamped to +-this before exp, as verl does (20).
    clip_mode: "standard" (PPO) or "gradient_preserving" (AEPO's stop-gradient upper clip:
      same loss value; tokens with A > 0 and ratio > 1 + high keep the gradient
      -A·(1 + high)·∇log pi instead of 0). docs/beyond.md.
    entropy_advantage: AEPO's entropy-aware advantage A·(1 + alpha·sg(z)), z = z-score of the
      current policy's token entropy over the loss tokens of ``entropy_advantage_scope``:
      "micro_batch" (the release: each micro-batch's own statistics) or "batch" (the whole
      update batch, exact: the caller passes its ``entropy_moments`` from a first pass).
      Off by default; the release's config never ran it (its entropy_coeff 0 skips it).
    entropy_advantage_alpha: alpha (release 0.2).
    """

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = 3.0
    loss_agg_mode: str = "token-mean"
    token_sum_norm: float = 4096.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    log_ratio_clamp: float = 20.0
    clip_mode: str = "standard"
    entropy_advantage: bool = False
    entropy_advantage_alpha: float = 0.2
    entropy_advantage_scope: str = "micro_batch"

    def __post_init__(self):
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"loss.clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")
        if self.entropy_advantage_scope not in ENTROPY_ADVANTAGE_SCOPES:
            raise ValueError(f"loss.entropy_advantage_scope must be one of {ENTROPY_ADVANTAGE_SCOPES}, "
                             f"got {self.entropy_advantage_scope!r}")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {self.loss_agg_mode!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (or None), got {self.dual_clip_c}")
        if not (0 <= self.clip_eps_low < 1 and self.clip_eps_high >= 0):
            raise ValueError("clip_eps_low must be in [0, 1) and clip_eps_high >= 0")


class PolicyLossOutput(NamedTuple):
    """loss_sum / denominator is the loss. ``stats`` holds sums over (weighted) loss tokens,
    except keys ending in ``_max`` / ``_min``; ``stats["num_tokens"]`` is their denominator."""

    loss_sum: Array  # []
    denominator: Array  # []
    stats: dict[str, Array]


def token_logprobs_and_entropy(logits: Array, targets: Array, temperature: float = 1.0) -> tuple[Array, Array]:
    """Log-prob of ``targets`` and exact full-vocabulary entropy of softmax(logits / temperature).

    Computed in float32 on max-shifted logits z: log p(y) = z_y - lse(z), H = lse(z) - sum_v p_v z_v.
    Masked vocabulary entries (logit -inf) contribute 0. This is the same quantity the sampler
    returns per generated token.

    Args:
      logits: [B, T, V] (any float dtype).
      targets: [B, T] int token ids.
      temperature: > 0.

    Returns:
      (logprobs [B, T], entropy [B, T]), float32.
    """
    x = logits.astype(jnp.float32)  # [B, T, V]
    finite = jnp.isfinite(x)
    # Shift by the row max before dividing by the temperature: the subtraction is exact, and
    # lse - E[z] on unshifted large logits would cancel catastrophically.
    row_max = jax.lax.stop_gradient(jnp.max(jnp.where(finite, x, -jnp.inf), axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    z = (x - row_max) / temperature
    lse = jax.nn.logsumexp(z, axis=-1)  # [B, T]
    target_z = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logprobs = target_z - lse
    probs = jnp.exp(z - lse[..., None])  # [B, T, V]; 0 at -inf
    expected_z = jnp.sum(jnp.where(finite, probs * jnp.where(finite, z, 0.0), 0.0), axis=-1)
    return logprobs, lse - expected_z


def ppo_clipped_token_loss(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip_c: float | None = 3.0,
    log_ratio_clamp: float = 20.0,
    clip_mode: str = "standard",
) -> tuple[Array, Array, Array, Array]:
    """Per-token PPO clipped surrogate loss with dual clip (verl ``compute_policy_loss``).

    ratio = exp(logp - old_logp); l = max(-A * ratio, -A * clip(ratio, 1 - low, 1 + high));
    for A < 0 and dual clip c: l = min(l, -A * c).

    clip_mode "gradient_preserving" (AEPO, BEYOND.md §1.5): the upper bound is
    (1 + high)·ratio / sg(ratio), equal in value to 1 + high, so the loss is unchanged while a
    token with A > 0 and ratio > 1 + high gets the gradient -A·(1 + high)·∇log pi (standard: 0).

    Args:
      logprobs, old_logprobs, advantages: [B, T].

    Returns:
      (loss [B, T], clipped [B, T] bool (clip term active), dual_clipped [B, T] bool, ratio [B, T]).
    """
    log_ratio = jnp.clip(logprobs - old_logprobs, -log_ratio_clamp, log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    if clip_mode == "standard":
        clipped_ratio = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    elif clip_mode == "gradient_preserving":
        # (1 + high)·ratio / sg(ratio), written so its value is exactly 1 + high (ratio - sg(ratio) == 0)
        sg_ratio = jax.lax.stop_gradient(ratio)
        upper = (1.0 + clip_eps_high) + (ratio - sg_ratio) * ((1.0 + clip_eps_high) / sg_ratio)
        clipped_ratio = jnp.where(ratio > 1.0 + clip_eps_high, upper, jnp.maximum(ratio, 1.0 - clip_eps_low))
    else:
        raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
    loss_clipped = -advantages * clipped_ratio
    loss = jnp.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    if dual_clip_c is None:
        return loss, clipped, jnp.zeros_like(clipped), ratio
    loss_dual = -advantages * dual_clip_c
    negative = advantages < 0
    dual_clipped = negative & (loss > loss_dual)
    return jnp.where(negative, jnp.minimum(loss, loss_dual), loss), clipped, dual_clipped, ratio


def kl_penalty(logprobs: Array, ref_logprobs: Array, estimator: str = "k3") -> Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi [B, T] (verl ``kl_penalty``).

    k1: logp - ref; k2: 0.5 (logp - ref)^2; k3: exp(ref - logp) - (ref - logp) - 1, clamped to
    [-10, 10] as verl's "low_var_kl".
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator == "k3":
        return jnp.clip(jnp.exp(-log_ratio) + log_ratio - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate_loss(
    token_loss: Array, mask: Array, mode: str = "token-mean", token_sum_norm: float = 4096.0
) -> tuple[Array, Array]:
    """Reduce a per-token loss to ``(loss_sum, denominator)`` for one (micro-)batch.

    ``mask`` may be real-valued (loss mask times per-token weights, e.g. 1/multiplicity from hard
    attribution); it multiplies every token's loss and, for the token means, their counts.
    Sequence-mean modes count sequences with at least one token of positive weight (verl counts
    every row; the two agree when the batch has no all-padding rows).

    Args:
      token_loss: [B, T]; mask: [B, T].

    Returns:
      (loss_sum [], denominator []); the loss is their ratio, and both add over micro-batches.
    """
    mask = mask.astype(jnp.float32)
    seq_sum = jnp.sum(token_loss * mask, axis=-1)  # [B]
    seq_count = jnp.sum(mask, axis=-1)  # [B]
    num_seqs = jnp.sum(seq_count > 0).astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(seq_sum), jnp.sum(seq_count)
    if mode == "seq-mean-token-sum":
        return jnp.sum(seq_sum), num_seqs
    if mode == "seq-mean-token-mean":
        return jnp.sum(jnp.where(seq_count > 0, seq_sum / jnp.maximum(seq_count, 1e-8), 0.0)), num_seqs
    if mode == "seq-mean-token-sum-norm":
        return jnp.sum(seq_sum) / token_sum_norm, num_seqs
    raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {mode!r}")


def policy_loss(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array,
    config: PolicyLossConfig = PolicyLossConfig(),
    *,
    ref_logprobs: Array | None = None,
    entropy: Array | None = None,
    token_weights: Array | None = None,
    entropy_moments: Array | None = None,
) -> PolicyLossOutput:
    """PPO/GRPO policy loss of one (micro-)batch as ``(loss_sum, denominator, stats)``.

    Per-token loss l = ppo_clip + kl_coef * KL - entropy_coef * H, aggregated with
    ``config.loss_agg_mode`` over ``mask * token_weights``. With ``config.entropy_advantage``
    the advantages are first reweighted by AEPO's entropy term (``aepo``), everywhere (dual
    clip included).

    Args:
      logprobs: [B, T] current policy log-probs of the taken tokens (differentiable).
      old_logprobs: [B, T] behaviour-policy log-probs (from the rollout or a recompute).
      advantages: [B, T] per-token advantages.
      mask: [B, T] loss mask (1 on model tokens, 0 on tool results and padding).
      config: ``PolicyLossConfig``.
      ref_logprobs: [B, T], required when config.kl_coef > 0.
      entropy: [B, T] per-token entropy of the current policy, required when entropy_coef > 0.
      token_weights: optional [B, T], e.g. the 1/multiplicity weights of hard attribution.
      entropy_moments: [3] ``aepo.entropy_moments`` of the whole update batch, required by
        ``entropy_advantage_scope: batch`` (ignored otherwise).

    Returns:
      ``PolicyLossOutput``; the loss is loss_sum / denominator.
    """
    chex.assert_rank(logprobs, 2)
    chex.assert_equal_shape([logprobs, old_logprobs, advantages, mask]
                            + [x for x in (ref_logprobs, entropy, token_weights) if x is not None])
    eff_mask = mask.astype(jnp.float32)
    if token_weights is not None:
        eff_mask = eff_mask * token_weights.astype(jnp.float32)
    old_logprobs = jax.lax.stop_gradient(old_logprobs)
    advantages = jax.lax.stop_gradient(advantages)
    if config.entropy_advantage:
        advantages = _entropy_advantages(advantages, entropy, eff_mask, config, entropy_moments)
    pg_loss, clipped, dual_clipped, ratio = ppo_clipped_token_loss(
        logprobs, old_logprobs, advantages, clip_eps_low=config.clip_eps_low, clip_eps_high=config.clip_eps_high,
        dual_clip_c=config.dual_clip_c, log_ratio_clamp=config.log_ratio_clamp, clip_mode=config.clip_mode)
    def agg(x):
        return aggregate_loss(x, eff_mask, config.loss_agg_mode, config.token_sum_norm)

    pg_sum, denominator = agg(pg_loss)
    stats = {"pg_loss_sum": pg_sum}
    token_loss = pg_loss + _regularisers(logprobs, ref_logprobs, entropy, config, agg, stats)
    loss_sum, _ = agg(token_loss)
    stats.update(_clip_stats(eff_mask, clipped, dual_clipped, ratio, old_logprobs - logprobs))
    return PolicyLossOutput(loss_sum, denominator, stats)


def _regularisers(logprobs: Array, ref_logprobs: Array | None, entropy: Array | None, config: PolicyLossConfig,
                  agg, stats: dict) -> Array:
    """kl_coef·KL − entropy_coef·H per token [B, T] (0 when both are off); their aggregated
    sums go into ``stats``."""
    extra = jnp.zeros_like(logprobs, jnp.float32)
    if config.kl_coef:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, jax.lax.stop_gradient(ref_logprobs), config.kl_estimator)
        extra = extra + config.kl_coef * kl
        stats["kl_loss_sum"] = agg(kl)[0]
    if config.entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs entropy")
        extra = extra - config.entropy_coef * entropy
        stats["entropy_loss_sum"] = agg(entropy)[0]
    return extra


def _entropy_advantages(advantages: Array, entropy: Array | None, eff_mask: Array, config: PolicyLossConfig,
                        moments: Array | None) -> Array:
    """AEPO's Ã = A·(1 + alpha·sg(z)) over the configured scope; all [B, T]."""
    if entropy is None:
        raise ValueError("loss.entropy_advantage needs the current policy's entropy")
    if config.entropy_advantage_scope == "batch" and moments is None:
        raise ValueError("loss.entropy_advantage_scope 'batch' needs entropy_moments of the whole batch (first pass)")
    scope = moments if config.entropy_advantage_scope == "batch" else None
    return aepo.entropy_balanced_advantages(advantages, entropy, eff_mask, config.entropy_advantage_alpha, scope)


def _clip_stats(eff_mask: Array, clipped: Array, dual_clipped: Array, ratio: Array, log_ratio_old: Array) -> dict:
    """Sums (and max/min) over the weighted loss tokens of the clipping statistics; all [B, T]."""
    on = eff_mask > 0
    ratio = jax.lax.stop_gradient(ratio)
    return dict(
        num_tokens=jnp.sum(eff_mask),
        clipped_tokens=jnp.sum(clipped * eff_mask),
        dual_clipped_tokens=jnp.sum(dual_clipped * eff_mask),
        approx_kl_sum=jnp.sum(jax.lax.stop_gradient(log_ratio_old) * eff_mask),
        ratio_sum=jnp.sum(ratio * eff_mask),
        ratio_max=jnp.max(jnp.where(on, ratio, -jnp.inf)),
        ratio_min=jnp.min(jnp.where(on, ratio, jnp.inf)),
    )


def combine_loss_outputs(a: PolicyLossOutput, b: PolicyLossOutput) -> PolicyLossOutput:
    """Accumulate two micro-batch outputs: sums add, ``*_max`` / ``*_min`` take max / min."""

    def merge(key):
        if key.endswith("_max"):
            return jnp.maximum(a.stats[key], b.stats[key])
        if key.endswith("_min"):
            return jnp.minimum(a.stats[key], b.stats[key])
        return a.stats[key] + b.stats[key]

    return PolicyLossOutput(a.loss_sum + b.loss_sum, a.denominator + b.denominator, {k: merge(k) for k in a.stats})


def summarize_loss_output(out: PolicyLossOutput) -> dict[str, Array]:
    """Final metrics: loss, pg/kl/entropy loss parts, clip fractions, approx KL, ratio stats."""
    denom = jnp.maximum(out.denominator, 1e-8)
    n = jnp.maximum(out.stats["num_tokens"], 1e-8)
    metrics = {"loss": out.loss_sum / denom}
    for key in ("pg_loss_sum", "kl_loss_sum", "entropy_loss_sum"):
        if key in out.stats:
            metrics[key.removesuffix("_sum")] = out.stats[key] / denom
    metrics.update(
        clip_fraction=out.stats["clipped_tokens"] / n,
        dual_clip_fraction=out.stats["dual_clipped_tokens"] / n,
        approx_kl=out.stats["approx_kl_sum"] / n,
        ratio_mean=out.stats["ratio_sum"] / n,
        ratio_max=out.stats["ratio_max"],
        ratio_min=out.stats["ratio_min"],
        num_tokens=out.stats["num_tokens"],
    )
    return metrics
