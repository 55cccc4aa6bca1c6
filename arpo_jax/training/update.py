"""The optax GRPO/PPO policy update: recompute log-probs, PPO loss, exact micro-batching.

A ``PolicyBatch`` holds right-padded sequences (prompt + response, tool results included)
and per-token arrays aligned with ``tokens``: index t describes token t, predicted from
tokens[:t]. ``update`` splits the batch into micro-batches, accumulates the gradient of the
global token mean exactly (``(loss_sum, denominator)``), clips, applies AdamW and skips the
step (parameters and optimizer state unchanged) when the loss or gradient is not finite.
``PolicyUpdater`` binds its static settings (graph, optimizer, loss, temperature, micro-batches,
vocabulary, logits chunk): what the RL loop applies and scores with.

A ``PackedPolicyBatch`` holds the same trajectories as rollout trees packed into rows
(``algorithms.packing``: each unique token once); its log-probs are computed on the packed rows
and gathered into the per-trajectory [B, T] layout, where the unchanged ``policy_loss`` runs:
the same loss and gradients, each shared token's forward and backward computed once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from arpo_jax.algorithms.accumulation import accumulate_gradients, batch_moments, split_micro_batches
from arpo_jax.algorithms.aepo import entropy_moments, merge_moments
from arpo_jax.algorithms.losses import PolicyLossConfig, policy_loss, summarize_loss_output, token_logprobs_and_entropy


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping (paper runs: lr 1e-6 constant, clip 1.0)."""

    lr: float = 1e-6
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | wsd
    total_steps: int = 1
    decay_steps: int = 0

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "wsd"):
            raise ValueError(f"optimizer.schedule must be 'constant', 'cosine' or 'wsd', got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.decay_steps < 0:
            raise ValueError(f"optimizer.decay_steps must be >= 0, got {self.decay_steps}")


def lr_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """The learning rate per update: linear warmup from 0, then constant, cosine decay to 0 by
    ``total_steps``, or "wsd" (warmup-stable-decay: constant, then linear decay to 0 over the
    last ``decay_steps`` updates, default a fifth of ``total_steps``)."""
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warm, 1), max(cfg.total_steps, 2))
    parts, bounds = [], []
    if warm:
        parts.append(optax.linear_schedule(0.0, cfg.lr, warm))
        bounds.append(warm)
    if cfg.schedule == "wsd":
        decay = cfg.decay_steps or max(cfg.total_steps // 5, 1)
        stable_end = max(cfg.total_steps - decay, warm)
        parts += [optax.constant_schedule(cfg.lr), optax.linear_schedule(cfg.lr, 0.0, decay)]
        bounds.append(stable_end)
    else:
        parts.append(optax.constant_schedule(cfg.lr))
    return optax.join_schedules(parts, bounds) if bounds else optax.constant_schedule(cfg.lr)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clip_by_global_norm → AdamW with the ``lr_schedule(cfg)`` learning rate."""
    constant = cfg.schedule == "constant" and not cfg.warmup_steps
    lr = cfg.lr if constant else lr_schedule(cfg)  # a float keeps no schedule step count in the state
    chain = [optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)]
    if cfg.grad_clip and cfg.grad_clip > 0:
        chain.insert(0, optax.clip_by_global_norm(cfg.grad_clip))
    return optax.chain(*chain)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PolicyBatch:
    """One update's sequences. All arrays [B, T]; tokens right-padded.

    attention_mask: 1 on real tokens (prompt, model tokens, tool results), 0 on padding.
    loss_mask: 1 on model-generated tokens (incl. closing tool tags and EOS), else 0.
    old_logprobs: behaviour-policy log-probs of each token (0 where loss_mask is 0).
    advantages: per-token advantages. token_weights: e.g. 1/multiplicity (hard attribution).
    ref_logprobs: frozen reference policy log-probs (used only when the loss has a KL term).
    """

    tokens: jax.Array
    attention_mask: jax.Array
    loss_mask: jax.Array
    old_logprobs: jax.Array
    advantages: jax.Array
    token_weights: jax.Array
    ref_logprobs: jax.Array


def make_policy_batch(tokens, attention_mask, loss_mask, old_logprobs, advantages, token_weights=None,
                      ref_logprobs=None) -> PolicyBatch:
    """Builds a PolicyBatch with the right dtypes (weights default to 1, reference to 0)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if token_weights is None:
        token_weights = jnp.ones(tokens.shape, jnp.float32)
    if ref_logprobs is None:
        ref_logprobs = jnp.zeros(tokens.shape, jnp.float32)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return PolicyBatch(tokens, jnp.asarray(attention_mask, jnp.int32), f32(loss_mask), f32(old_logprobs),
                       f32(advantages), f32(token_weights), f32(ref_logprobs))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PackedPolicyBatch:
    """One update's rollout trees packed into rows (``algorithms.packing``): each unique token
    computed once, the loss on today's per-trajectory [B, T] layout through the gather map.

    tokens / positions / key_end / pred: [R, L] packed rows (RoPE positions along each token's
    path, the interval mask ``k <= q < key_end[k]``, each token's path-predecessor column).
    row / col: [B, T] the packed slot of token t of trajectory b, ``row`` counted within its
    micro-batch; valid: [B, T] 1 on real tokens. loss_mask, old_logprobs, advantages,
    token_weights, ref_logprobs: [B, T] as in ``PolicyBatch``. Micro-batch k holds packed rows
    k, k + K, … and trajectories k, k + K, … (a tree never straddles micro-batches).
    """

    tokens: jax.Array
    positions: jax.Array
    key_end: jax.Array
    pred: jax.Array
    row: jax.Array
    col: jax.Array
    valid: jax.Array
    loss_mask: jax.Array
    old_logprobs: jax.Array
    advantages: jax.Array
    token_weights: jax.Array
    ref_logprobs: jax.Array


PACKED_ROW_FIELDS = ("tokens", "positions", "key_end", "pred")


def make_packed_policy_batch(tokens, positions, key_end, pred, row, col, valid, loss_mask, old_logprobs, advantages,
                             token_weights=None, ref_logprobs=None) -> PackedPolicyBatch:
    """Builds a PackedPolicyBatch with the right dtypes (weights default to 1, reference to 0)."""
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    shape = jnp.shape(row)
    token_weights = jnp.ones(shape, jnp.float32) if token_weights is None else token_weights
    ref_logprobs = jnp.zeros(shape, jnp.float32) if ref_logprobs is None else ref_logprobs
    return PackedPolicyBatch(i32(tokens), i32(positions), i32(key_end), i32(pred), i32(row), i32(col), i32(valid),
                             f32(loss_mask), f32(old_logprobs), f32(advantages), f32(token_weights), f32(ref_logprobs))


def split_packed(batch: PackedPolicyBatch, num_micro: int) -> PackedPolicyBatch:
    """[num_micro, ...] micro-batches: packed rows and trajectories each split strided."""
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    rows = split_micro_batches({k: fields.pop(k) for k in PACKED_ROW_FIELDS}, num_micro)
    return PackedPolicyBatch(**rows, **split_micro_batches(fields, num_micro))


def map_time_chunks(score, hidden: jax.Array, targets: jax.Array, chunk: int):
    """``score(hidden [B, C, D], targets [B, C]) -> tuple of [B, C]`` over time chunks of ``chunk``
    tokens (0: all T at once), each under ``jax.checkpoint`` (recomputed in the backward pass), so
    that the [B, T, V] logits ``score`` computes from ``hidden`` are never all materialised.
    Returns the tuple of [B, T] arrays, as one call over the whole sequence would."""
    b, t = targets.shape
    if not chunk or t <= chunk:
        return score(hidden, targets)
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, -1).swapaxes(0, 1)  # [n, B, C, D]
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, C]
    outs = jax.lax.map(jax.checkpoint(lambda xs: score(*xs)), (h, y))  # tuple of [n, B, C]
    return tuple(v.swapaxes(0, 1).reshape(b, -1)[:, :t] for v in outs)


def _scorer(model, temperature: float, vocab_size: int | None):
    """(hidden [B, C, D], targets [B, C]) → (log-probs, entropies) [B, C] at ``temperature``,
    logits of ids >= ``vocab_size`` masked as the sampler masks them."""
    def score(h, y):
        logits = model.logits(h)
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
        return token_logprobs_and_entropy(logits, y, temperature)

    return score


def sequence_logprobs(model, tokens: jax.Array, attention_mask: jax.Array, temperature: float = 1.0,
                      vocab_size: int | None = None, logits_chunk: int = 0):
    """Per-token log-probs and entropies [B, T] of ``tokens`` under ``model`` (index 0 → 0).

    Value t is log p(tokens[t] | tokens[:t]) at ``temperature``, the quantity the sampler
    records while generating: logits of ids >= ``vocab_size`` (embedding rows beyond the
    tokenizer) are masked as the sampler masks them. ``logits_chunk`` > 0 computes the
    [B, chunk, V] logits one time-chunk at a time under ``jax.checkpoint`` (recomputed in the
    backward pass), so [B, T, V] logits are never materialised for long sequences.
    """
    hidden = model(tokens, attention_mask=attention_mask, return_hidden=True)[:, :-1]  # [B, T-1, D]
    targets = tokens[:, 1:]  # [B, T-1]
    logprobs, entropy = map_time_chunks(_scorer(model, temperature, vocab_size), hidden, targets, logits_chunk)
    pad = jnp.zeros((targets.shape[0], 1), jnp.float32)
    return jnp.concatenate([pad, logprobs], 1), jnp.concatenate([pad, entropy], 1)


def packed_logprobs(model, mb: PackedPolicyBatch, temperature: float = 1.0, vocab_size: int | None = None,
                    logits_chunk: int = 0):
    """(log-probs, entropies) [B, T] of the trajectories of packed micro-batch ``mb``, equal to
    ``sequence_logprobs`` on their unpacked rows (index 0 and padding → 0).

    One forward pass over the packed rows; the token at column c is scored from the hidden state
    of its path predecessor ``pred[c]`` (one vocabulary projection per packed token); the
    per-trajectory values are gathered with the map (``row``, ``col``).
    """
    hidden = model(mb.tokens, positions=mb.positions, key_end=mb.key_end, return_hidden=True)  # [R, L, D]
    h = jnp.take_along_axis(hidden, mb.pred[..., None], axis=1)  # [R, L, D]: the predecessor's state
    lp, ent = map_time_chunks(_scorer(model, temperature, vocab_size), h, mb.tokens, logits_chunk)  # [R, L]
    keep = mb.valid.astype(bool).at[:, 0].set(False)  # [B, T]
    return jnp.where(keep, lp[mb.row, mb.col], 0.0), jnp.where(keep, ent[mb.row, mb.col], 0.0)


def apply_if_finite(optimizer, params, opt_state, grads, loss_sum):
    """One optimizer step, kept only when the loss and the gradient norm are finite (else the
    old params/state are returned: the step is skipped). → (params, opt_state, grad_norm, finite)."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state), grad_norm, finite


def _token_logprobs(model, mb, temperature: float, vocab_size: int | None, logits_chunk: int):
    """(log-probs, entropies) in the per-trajectory [B, T] layout of a ``PolicyBatch`` or a
    ``PackedPolicyBatch`` micro-batch."""
    if isinstance(mb, PackedPolicyBatch):
        return packed_logprobs(model, mb, temperature, vocab_size, logits_chunk)
    return sequence_logprobs(model, mb.tokens, mb.attention_mask, temperature, vocab_size, logits_chunk)


def policy_loss_fn(graphdef, loss_cfg: PolicyLossConfig, temperature: float, vocab_size: int | None = None,
                   logits_chunk: int = 0, entropy_moments=None):
    """(params, micro_batch) → PolicyLossOutput for ``accumulate_gradients``; the micro-batch is
    a ``PolicyBatch`` or a ``PackedPolicyBatch`` (the same loss, from packed log-probs).
    entropy_moments: the whole batch's (AEPO ``entropy_advantage_scope: batch``)."""

    def loss_fn(params, mb):
        logprobs, entropy = _token_logprobs(nnx.merge(graphdef, params), mb, temperature, vocab_size, logits_chunk)
        ref = mb.ref_logprobs if loss_cfg.kl_coef else None
        return policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.loss_mask, loss_cfg, ref_logprobs=ref,
                           entropy=entropy, token_weights=mb.token_weights, entropy_moments=entropy_moments)

    return loss_fn


def batch_entropy_moments(graphdef, params, micro_batches, temperature: float, vocab_size: int | None,
                          logits_chunk: int):
    """AEPO's global-batch entropy statistics (``aepo.entropy_moments`` merged over the
    micro-batches): a forward pass per micro-batch before the loss, no gradient."""
    def stats(p, mb):
        _, entropy = _token_logprobs(nnx.merge(graphdef, p), mb, temperature, vocab_size, logits_chunk)
        return entropy_moments(entropy, mb.loss_mask * mb.token_weights)

    return batch_moments(stats, params, micro_batches, merge_moments)


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "loss_cfg", "temperature", "num_micro",
                                             "vocab_size", "logits_chunk"),
                   donate_argnames=("params", "opt_state"))
def update(params, opt_state, batch: PolicyBatch, loss_scale=None, *, graphdef, optimizer,
           loss_cfg: PolicyLossConfig, temperature: float = 1.0, num_micro: int = 1, vocab_size: int | None = None,
           logits_chunk: int = 0):
    """One optimizer step on ``batch`` (a ``PolicyBatch`` or a ``PackedPolicyBatch``) →
    (params, opt_state, metrics). Non-finite → skipped.

    loss_scale: optional float32 [] multiplying the loss (NaN only to test the safety path).
    """
    split = split_packed if isinstance(batch, PackedPolicyBatch) else split_micro_batches
    micro = split(batch, num_micro)
    moments = None
    if loss_cfg.entropy_advantage and loss_cfg.entropy_advantage_scope == "batch":
        moments = batch_entropy_moments(graphdef, params, micro, temperature, vocab_size, logits_chunk)
    base_fn = policy_loss_fn(graphdef, loss_cfg, temperature, vocab_size, logits_chunk, moments)

    def loss_fn(p, mb):
        out = base_fn(p, mb)
        return out if loss_scale is None else out._replace(loss_sum=out.loss_sum * loss_scale)

    grads, out = accumulate_gradients(loss_fn, params, micro)
    params, opt_state, grad_norm, finite = apply_if_finite(optimizer, params, opt_state, grads, out.loss_sum)
    metrics = summarize_loss_output(out)
    metrics.update(grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
    return params, opt_state, metrics


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "vocab_size", "logits_chunk", "num_micro"))
def score_tokens(params, tokens, attention_mask, *, graphdef, temperature: float = 1.0, vocab_size: int | None = None,
                 logits_chunk: int = 0, num_micro: int = 1):
    """(log-probs, entropies) [B, T] of ``tokens`` under ``params`` (old-log-prob recompute,
    frozen-reference scoring). ``num_micro`` > 1: the rows are scored in that many sequential
    micro-batches, split as ``update`` splits them (bounds activation memory)."""
    def score(xs):
        return sequence_logprobs(nnx.merge(graphdef, params), *xs, temperature, vocab_size, logits_chunk)

    if num_micro == 1:
        return score((tokens, attention_mask))
    lp, ent = jax.lax.map(score, split_micro_batches((tokens, attention_mask), num_micro))  # [K, B/K, T]
    unsplit = lambda x: x.swapaxes(0, 1).reshape(tokens.shape)  # noqa: E731
    return unsplit(lp), unsplit(ent)


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "vocab_size", "logits_chunk", "num_micro"))
def score_packed(params, batch: PackedPolicyBatch, *, graphdef, temperature: float = 1.0,
                 vocab_size: int | None = None, logits_chunk: int = 0, num_micro: int = 1):
    """(log-probs, entropies) [B, T] of the trajectories of ``batch`` from its packed rows (as
    ``score_tokens`` on the unpacked rows), one micro-batch at a time as ``update`` splits it."""
    def score(mb):
        return packed_logprobs(nnx.merge(graphdef, params), mb, temperature, vocab_size, logits_chunk)

    if num_micro == 1:
        return score(batch)
    lp, ent = jax.lax.map(score, split_packed(batch, num_micro))  # [K, B/K, T]
    unsplit = lambda x: x.swapaxes(0, 1).reshape(batch.row.shape)  # noqa: E731
    return unsplit(lp), unsplit(ent)


@functools.lru_cache(maxsize=16)
def cached_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """``make_optimizer``, memoised: equal configs give the same object, so jitted steps that
    take the optimizer as a static argument do not recompile for each trainer in a process."""
    return make_optimizer(cfg)


@dataclasses.dataclass(frozen=True)
class PolicyUpdater:
    """The RL policy update with its static settings: ``apply`` one optimizer step of ``update``
    and ``score`` tokens (``score_tokens``) with the same graph, vocabulary mask, temperature,
    micro-batching and logits chunking. Holds no state: params and optimizer state are passed
    in and returned (the training loop owns them)."""

    graphdef: Any
    optimizer: optax.GradientTransformation
    loss_cfg: PolicyLossConfig = PolicyLossConfig()
    temperature: float = 1.0
    num_micro: int = 1
    vocab_size: int | None = None
    logits_chunk: int = 0

    def init(self, params):
        """A fresh optimizer state for ``params``."""
        return self.optimizer.init(params)

    def apply(self, params, opt_state, batch: PolicyBatch, loss_scale=None):
        """One step of ``update`` → (params, opt_state, metrics on device); ``params`` and
        ``opt_state`` are donated."""
        return update(params, opt_state, batch, loss_scale, graphdef=self.graphdef, optimizer=self.optimizer,
                      loss_cfg=self.loss_cfg, temperature=self.temperature, num_micro=self.num_micro,
                      vocab_size=self.vocab_size, logits_chunk=self.logits_chunk)

    def score_packed(self, params, batch: PackedPolicyBatch) -> tuple[jax.Array, jax.Array]:
        """(log-probs, entropies) [B, T] of ``batch``'s trajectories from its packed rows."""
        return score_packed(params, batch, graphdef=self.graphdef, temperature=self.temperature,
                            vocab_size=self.vocab_size, logits_chunk=self.logits_chunk, num_micro=self.num_micro)

    def score(self, params, tokens, attention_mask) -> tuple[jax.Array, jax.Array]:
        """(log-probs, entropies) [B, T] of ``tokens`` under ``params``, micro-batch by micro-batch."""
        return score_tokens(params, tokens, attention_mask, graphdef=self.graphdef, temperature=self.temperature,
                            vocab_size=self.vocab_size, logits_chunk=self.logits_chunk, num_micro=self.num_micro)
