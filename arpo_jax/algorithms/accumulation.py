"""Exact gradient accumulation over micro-batches for losses returned as (sum, denominator).

A token-mean over the global batch is sum_k loss_sum_k / sum_k denom_k, not the mean of the
micro-batch means (micro-batches hold different numbers of tokens). Gradients are accumulated
the same way: sum_k grad(loss_sum_k), divided once by the global denominator. The denominator
must not depend on the parameters (it counts tokens or sequences).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from arpo_jax.algorithms.losses import PolicyLossOutput, combine_loss_outputs

Array = jnp.ndarray


def global_mean(loss_sums: Array, denominators: Array) -> Array:
    """[K] micro-batch loss sums and [K] denominators -> the full-batch mean []."""
    return jnp.sum(loss_sums) / jnp.maximum(jnp.sum(denominators), 1e-8)


def split_micro_batches(batch: Any, num_micro: int) -> Any:
    """[B, ...] leaves -> [num_micro, B / num_micro, ...]; micro-batch k holds rows k, k + K, ...

    Strided rather than contiguous: with rows sharded in contiguous blocks over the mesh's
    batch axes (one block per device, one per process on a multi-host mesh), every
    micro-batch keeps rows on every device, so the split needs no resharding.
    """
    b = jax.tree_util.tree_leaves(batch)[0].shape[0]
    if b % num_micro:
        raise ValueError(f"batch of {b} sequences does not split into {num_micro} micro-batches")
    return jax.tree_util.tree_map(
        lambda x: x.reshape((b // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1), batch)


def accumulate_gradients(
    loss_fn: Callable[[Any, Any], PolicyLossOutput], params: Any, micro_batches: Any
) -> tuple[Any, PolicyLossOutput]:
    """Gradient of the full-batch loss from K micro-batches, run one at a time with ``lax.scan``.

    Args:
      loss_fn: (params, micro_batch) -> PolicyLossOutput (e.g. a model forward + ``policy_loss``).
      params: parameter pytree.
      micro_batches: pytree whose leaves have a leading micro-batch axis [K, ...], K >= 1.

    Returns:
      (grads, combined): grads of combined.loss_sum / combined.denominator w.r.t. params, and the
      micro-batch outputs combined with ``combine_loss_outputs``.
    """

    def sum_and_grad(batch):
        def loss_sum(p):
            out = loss_fn(p, batch)
            return out.loss_sum, out

        (_, out), grads = jax.value_and_grad(loss_sum, has_aux=True)(params)
        return grads, out

    first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
    rest = jax.tree_util.tree_map(lambda x: x[1:], micro_batches)
    grads0, out0 = sum_and_grad(first)

    def step(carry, batch):
        grads_acc, out_acc = carry
        grads, out = sum_and_grad(batch)
        grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
        return (grads_acc, combine_loss_outputs(out_acc, out)), None

    (grad_sum, combined), _ = jax.lax.scan(step, (grads0, out0), rest)
    scale = 1.0 / jnp.maximum(combined.denominator, 1e-8)
    grads = jax.tree_util.tree_map(lambda g: g * scale, grad_sum)
    return grads, combined


def batch_moments(stats_fn: Callable[[Any, Any], Any], params: Any, micro_batches: Any,
                  combine: Callable[[Any, Any], Any] | None = None) -> Any:
    """A first pass over the micro-batches: ``stats_fn(params, micro_batch)`` of each, folded
    with ``combine`` (default: added leaf by leaf), with no gradient.

    Statistics a loss needs over the whole batch before any micro-batch's loss (AEPO's
    global-batch entropy z-score: ``aepo.entropy_moments`` merged by ``aepo.merge_moments``):
    compute them here, then close ``loss_fn`` over them for ``accumulate_gradients``. Costs one
    forward pass per micro-batch.

    Args:
      stats_fn: (params, micro_batch) -> pytree of arrays.
      params: parameter pytree.
      micro_batches: leaves with a leading micro-batch axis [K, ...].
      combine: (accumulated, new) -> accumulated.

    Returns:
      the combined pytree.
    """
    combine = combine or (lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))
    params = jax.lax.stop_gradient(params)
    first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
    rest = jax.tree_util.tree_map(lambda x: x[1:], micro_batches)

    def step(acc, batch):
        return combine(acc, stats_fn(params, batch)), None

    total, _ = jax.lax.scan(step, stats_fn(params, first), rest)
    return total
