"""Macro actions: segments of model tokens between tool results, and per-segment <-> per-token maps.

In ARPO's Generalized Policy Gradient view a trajectory is a sequence of macro actions: each
maximal run of model-generated tokens (up to and including a tool call's closing tag or EOS)
is one segment; tool-result tokens (loss mask 0) separate them. Advantages may be defined per
segment [B, S] and are expanded to per-token advantages [B, T] for the update.

``segment_ids`` [B, T] int: the segment index (0, 1, ...) of each model token within its own
trajectory, -1 for tokens that are not model tokens (tool results, padding). S is static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def segment_ids_from_mask(mask: Array) -> Array:
    """Numbers the maximal runs of mask == 1 in each row: 0, 1, 2, ...; -1 where mask == 0.

    Args:
      mask: [B, T] loss mask (0/1 or bool).

    Returns:
      [B, T] int32 segment ids.
    """
    on = mask.astype(bool)
    prev_on = jnp.pad(on[:, :-1], ((0, 0), (1, 0)))  # [B, T], False at t = 0
    starts = on & ~prev_on
    ids = jnp.cumsum(starts.astype(jnp.int32), axis=1) - 1
    return jnp.where(on, ids, -1)


def segment_one_hot(segment_ids: Array, num_segments: int) -> Array:
    """[B, T] ids -> [B, T, S] float32 one-hot (all zeros where id == -1 or id >= S)."""
    return jax.nn.one_hot(segment_ids, num_segments, dtype=jnp.float32)


def expand_segment_values(segment_values: Array, segment_ids: Array) -> Array:
    """Per-segment values [B, S] -> per-token values [B, T]; 0 on tokens with id -1.

    Args:
      segment_values: [B, S]; segment_ids: [B, T].
    """
    one_hot = segment_one_hot(segment_ids, segment_values.shape[1])  # [B, T, S]
    return jnp.einsum("bts,bs->bt", one_hot, segment_values.astype(jnp.float32))


def reduce_to_segments(token_values: Array, segment_ids: Array, num_segments: int, reduction: str = "mean") -> Array:
    """Per-token values [B, T] -> per-segment [B, S] by "sum" or "mean" over each segment.

    Empty segments (index beyond a trajectory's last segment) get 0.
    """
    one_hot = segment_one_hot(segment_ids, num_segments)  # [B, T, S]
    sums = jnp.einsum("bts,bt->bs", one_hot, token_values.astype(jnp.float32))
    if reduction == "sum":
        return sums
    if reduction == "mean":
        counts = one_hot.sum(axis=1)  # [B, S]
        return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def segment_present(segment_ids: Array, num_segments: int) -> Array:
    """[B, S] bool: whether trajectory b has a segment s."""
    return segment_one_hot(segment_ids, num_segments).sum(axis=1) > 0


def soft_segment_advantages(seq_advantages: Array, segment_ids: Array, num_segments: int) -> Array:
    """Soft attribution as macro-action advantages: every segment of b gets seq_advantages[b].

    ``expand_segment_values`` of the result equals ``soft_token_advantages`` on the model tokens.

    Returns:
      [B, S], 0 for absent segments.
    """
    present = segment_present(segment_ids, num_segments).astype(jnp.float32)
    return seq_advantages.astype(jnp.float32)[:, None] * present
