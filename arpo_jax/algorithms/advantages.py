"""Outcome advantages: GRPO (verl-compatible), Dr.GRPO, REINFORCE++, soft/hard tree attribution.

Shapes: B trajectories (all prompts of a batch together), T response tokens.

Every function here is a pure ``jnp`` function of arrays, jit-able (group ids and tree indices
are data, never static), and free of Python control flow on array values.

Group statistics use a [B, B] "same group" matrix instead of ``segment_sum`` so that group ids
can be any integers (no static number of groups). Memory is B² floats: 16 MiB at B = 2048.
"""

from __future__ import annotations

import jax.numpy as jnp

from arpo_jax.algorithms import tree as tree_lib

Array = jnp.ndarray


def _same_group(group_ids: Array) -> Array:
    """[B] ints -> [B, B] float32, 1 where trajectories i and j belong to the same prompt."""
    return (group_ids[:, None] == group_ids[None, :]).astype(jnp.float32)


def _centered_and_std(rewards: Array, group_ids: Array, unbiased: bool) -> tuple[Array, Array, Array]:
    """(r - group mean [B], group std [B], group size [B]) for float32 rewards [B].

    Computed relative to the group's max reward: a group of equal rewards then gets deviations
    of exactly 0 (a float32 mean such as (3 * 1.1) / 3 is not exactly 1.1), and precision improves.
    """
    same = _same_group(group_ids)  # [B, B]
    count = same.sum(axis=1)  # [B]
    ref = jnp.max(jnp.where(same > 0, rewards[None, :], -jnp.inf), axis=1)  # [B] group max
    shifted = rewards - ref  # [B]; ref is shared within a group
    shifted_mean = jnp.einsum("ij,j->i", same, shifted) / count  # [B]
    sq_dev = jnp.einsum("ij,ij->i", same, (shifted[None, :] - shifted_mean[:, None]) ** 2)  # [B]
    dof = jnp.maximum(count - 1.0, 1.0) if unbiased else count
    std = jnp.where(count > 1, jnp.sqrt(sq_dev / dof), 0.0)
    return shifted - shifted_mean, std, count


def group_mean_and_std(rewards: Array, group_ids: Array, *, unbiased: bool = True) -> tuple[Array, Array, Array]:
    """Per-trajectory statistics of its own group.

    Args:
      rewards: [B] scalar rewards (sequence scores).
      group_ids: [B] int prompt id of each trajectory.
      unbiased: divide the sum of squares by (n - 1) as ``torch.std`` does (verl), else by n.

    Returns:
      (mean [B], std [B], count [B]) of the group each trajectory belongs to. ``std`` is 0 for a
      group of size 1.
    """
    rewards = rewards.astype(jnp.float32)
    centered, std, count = _centered_and_std(rewards, group_ids, unbiased)
    return rewards - centered, std, count


def grpo_advantages(
    rewards: Array,
    group_ids: Array,
    *,
    eps: float = 1e-6,
    normalize_std: bool = True,
    unbiased_std: bool = True,
) -> Array:
    """GRPO sequence advantages ``(r - mean_group) / (std_group + eps)``.

    Matches verl's ``compute_grpo_outcome_advantage``: the std is ``torch.std``, i.e. unbiased
    (ddof = 1), and ``eps`` is added to the std (not the variance). ``normalize_std=False`` is
    Dr.GRPO (``r - mean_group``; verl's ``norm_adv_by_std_in_grpo=False``).

    Singleton groups: the advantage is 0 here (one sample carries no relative signal). verl
    instead uses mean 0 and std 1 for them, i.e. passes the raw score through. ARPO groups always
    hold M >= 2 trajectories, so the two agree in practice.

    Args:
      rewards: [B] sequence rewards.
      group_ids: [B] int prompt id per trajectory.

    Returns:
      [B] float32 advantages; they sum to ~0 within each group.
    """
    centered, std, count = _centered_and_std(rewards.astype(jnp.float32), group_ids, unbiased_std)
    adv = centered / (std + eps) if normalize_std else centered
    return jnp.where(count > 1, adv, 0.0)


def verl_group_normalize(scores: Array, group_ids: Array, *, eps: float = 1e-6, normalize_std: bool = True
                         ) -> Array:
    """verl's ``compute_grpo_outcome_advantage`` on any grouping, singletons included.

    (s - mean_g) / (std_g + eps) with the unbiased std; a group of one has mean 0 and std 1
    (the score passes through as s / (1 + eps)); a group of equal scores gets exactly 0.
    ``normalize_std=False``: s - mean_g (singletons: s).

    Args:
      scores: [B]; group_ids: [B] int.

    Returns:
      [B] float32.
    """
    scores = scores.astype(jnp.float32)
    centered, std, count = _centered_and_std(scores, group_ids, True)
    if not normalize_std:
        return jnp.where(count > 1, centered, scores)
    return jnp.where(count > 1, centered / (std + eps), scores / (1.0 + eps))


def masked_whiten(values: Array, mask: Array, *, eps: float = 1e-8) -> Array:
    """verl's ``masked_whiten``: (v - mean) / sqrt(var + eps) over all masked entries.

    Mean and (unbiased, Bessel-corrected) variance are token-weighted over the whole batch.

    Args:
      values: [B, T]; mask: [B, T] (0/1 or bool).

    Returns:
      [B, T] whitened values, multiplied by the mask.
    """
    mask = mask.astype(jnp.float32)
    values = values.astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (values * mask).sum() / n
    var = (((values - mean) ** 2) * mask).sum() / n
    var = var * n / jnp.maximum(n - 1.0, 1.0)
    return (values - mean) * jnp.reciprocal(jnp.sqrt(var + eps)) * mask


def reinforce_pp_token_advantages(
    rewards: Array, mask: Array, group_ids: Array | None = None, *, eps: float = 1e-8
) -> Array:
    """REINFORCE++ (verl, gamma = 1, outcome reward): every token's return is the sequence
    reward; returns are whitened globally over all masked tokens of the batch.

    With ``group_ids`` given this is verl's "REINFORCE++-baseline": the group mean is subtracted
    first (no std division), then the same global whitening.

    Args:
      rewards: [B]; mask: [B, T] response (loss) mask; group_ids: optional [B].

    Returns:
      [B, T] per-token advantages.
    """
    scores = rewards.astype(jnp.float32)
    if group_ids is not None:
        scores = grpo_advantages(scores, group_ids, normalize_std=False)
    returns = scores[:, None] * mask.astype(jnp.float32)  # [B, T]
    return masked_whiten(returns, mask, eps=eps)


def soft_token_advantages(seq_advantages: Array, mask: Array) -> Array:
    """Soft attribution = plain GRPO: every token of trajectory b gets seq_advantages[b].

    Shared-prefix tokens occur once in every trajectory that contains them and so contribute
    the multiplicity-weighted mean of those trajectories' advantages to the loss.

    Args:
      seq_advantages: [B]; mask: [B, T] loss mask.

    Returns:
      [B, T] advantages (0 where mask is 0).
    """
    return seq_advantages.astype(jnp.float32)[:, None] * mask.astype(jnp.float32)


def hard_token_advantages(
    seq_advantages: Array, parent: Array, branch_pos: Array, mask: Array
) -> tuple[Array, Array]:
    """Hard attribution on a rollout tree: each token node gets the mean advantage of the
    trajectories that contain it; the loss should count it once.

    Tree representation (see ``arpo_jax.algorithms.tree``): ``parent[b]`` is the batch index of
    the trajectory b forked from (-1 for a global sample), ``branch_pos[b]`` the response
    position of the fork: b's tokens [0, branch_pos[b]) are its parent's tokens. The whole batch
    (a forest, one tree per prompt) is handled at once.

    Per-token weights are 1 / multiplicity, where multiplicity is the number of trajectories
    holding a copy of that token node. All copies of a node have the same context, the same
    token, the same old/new log-prob and (here) the same advantage, so their per-token losses
    are equal; weighting each copy by 1/m makes the copies sum to exactly one token's loss and
    one token's gradient. Pass the weights as ``token_weights`` to the policy loss: with
    token-mean aggregation the loss becomes the mean over distinct tree tokens.

    Conservation (tested): within every node, the sum of hard advantages over its copies equals
    the sum of soft advantages over them, so sum(hard * mask) == sum(soft * mask); and
    sum(weights * mask) is the number of distinct model tokens in the forest.

    Args:
      seq_advantages: [B] sequence advantages (e.g. ``grpo_advantages`` of the rewards).
      parent: [B] int, -1 for roots.
      branch_pos: [B] int, 0 for roots.
      mask: [B, T] loss mask (model tokens).

    Returns:
      (advantages [B, T], weights [B, T]), both 0 where mask is 0.
    """
    B, T = mask.shape
    owner = tree_lib.token_owner(parent, branch_pos, T)  # [B, T]
    per_copy = jnp.broadcast_to(seq_advantages.astype(jnp.float32)[:, None], (B, T))  # [B, T]
    node_sum = tree_lib.node_reduce(per_copy, owner)  # [B, T] sum over the node's copies
    node_count = tree_lib.node_reduce(jnp.ones((B, T), jnp.float32), owner)  # [B, T] multiplicity
    maskf = mask.astype(jnp.float32)
    advantages = node_sum / node_count * maskf
    weights = maskf / node_count
    return advantages, weights
