"""Logits → (token, log-prob, entropy), on device, per row.

Definitions (the trainer must use the same ones; they coincide with ``log_softmax(logits /
temperature)`` when top-k and top-p are off, which is ARPO's setting: temperature 1, top-p 1):

* masking: logits of ids >= ``vocab_size`` (embedding rows beyond the tokenizer) are -inf
  before anything else, so they are never sampled and carry no probability mass;
* ``entropy``: H(softmax(masked_logits / T)) over the full (masked) vocabulary, in nats, with
  T = ``temperature`` (1 when greedy) — i.e. *before* top-k/top-p truncation;
* ``logprob``: log-probability of the chosen token under the distribution it was drawn
  from: softmax(masked_logits / T), truncated by top-k then top-p and renormalised. When
  greedy, the token is the argmax and its log-prob is taken under softmax(masked_logits)
  (a greedy "distribution" would give 0 for every token).

Top-p keeps the smallest prefix of the probability-sorted vocabulary whose mass reaches
``top_p`` (the token that crosses the threshold is kept); tokens tied with the last kept
logit are kept too. Each row draws with its own key, so a row's tokens depend only on its
key and its logits, never on which other rows share the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from arpo_jax.sampling.config import SamplingConfig


def mask_vocab(logits: jax.Array, vocab_size: int | None) -> jax.Array:
    """Sets logits [..., V] of ids >= vocab_size to -inf."""
    v = logits.shape[-1]
    if vocab_size is None or vocab_size >= v:
        return logits
    return jnp.where(jnp.arange(v) < vocab_size, logits, -jnp.inf)


def top_k_top_p_filter(scaled: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Top-k then top-p on temperature-scaled logits [B, V]; removed entries become -inf."""
    if top_k <= 0 and top_p >= 1.0:
        return scaled
    if 0 < top_k < scaled.shape[-1]:
        sorted_desc, _ = jax.lax.top_k(scaled, top_k)  # [B, k]
    else:
        sorted_desc = -jnp.sort(-scaled, axis=-1)  # [B, V]
    threshold = sorted_desc[:, -1]  # [B] top-k cut (or the smallest logit)
    if top_p < 1.0:
        probs = jax.nn.softmax(sorted_desc, axis=-1)  # renormalised over the top-k
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        num_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)  # [B]
        threshold = jnp.take_along_axis(sorted_desc, (num_keep - 1)[:, None], axis=-1)[:, 0]
    return jnp.where(scaled >= threshold[:, None], scaled, -jnp.inf)


def topk_entropy(logp: jax.Array, k: int) -> jax.Array:
    """-Σ exp(l)·l over the k largest log-probs of each row [B, V] -> [B] (not renormalised)."""
    top, _ = jax.lax.top_k(logp, k)  # [B, k]
    finite = jnp.isfinite(top)
    safe = jnp.where(finite, top, 0.0)
    return -jnp.sum(jnp.where(finite, jnp.exp(safe) * safe, 0.0), axis=-1)


def sample_tokens(logits: jax.Array, keys: jax.Array, cfg: SamplingConfig, with_topk: bool = False):
    """Draws one token per row.

    logits: fp32 [B, V] (raw model output); keys: raw uint32 key data [B, 2].
    Returns (tokens int32 [B], logprobs fp32 [B], entropies fp32 [B]; zeros if
    ``cfg.compute_entropy`` is False), plus ``topk_entropy`` [B] when ``with_topk``.
    """
    logits = mask_vocab(logits.astype(jnp.float32), cfg.vocab_size)
    scaled = logits / cfg.effective_temperature  # [B, V]
    logp = jax.nn.log_softmax(scaled, axis=-1)  # [B, V]
    if cfg.compute_entropy:
        p = jnp.exp(logp)
        entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)  # [B]
    else:
        entropy = jnp.zeros(logits.shape[:1], jnp.float32)
    if cfg.greedy:
        tokens = jnp.argmax(scaled, axis=-1).astype(jnp.int32)
        token_logp = logp
    else:
        trunc = top_k_top_p_filter(scaled, cfg.top_k, cfg.top_p)
        typed = jax.random.wrap_key_data(keys)
        tokens = jax.vmap(jax.random.categorical)(typed, trunc).astype(jnp.int32)
        token_logp = logp if trunc is scaled else jax.nn.log_softmax(trunc, axis=-1)
    logprobs = jnp.take_along_axis(token_logp, tokens[:, None], axis=-1)[:, 0]
    if with_topk:
        return tokens, logprobs, entropy, topk_entropy(logp, cfg.topk_entropy)
    return tokens, logprobs, entropy
