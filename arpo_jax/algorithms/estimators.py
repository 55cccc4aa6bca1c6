"""Advantage estimators by name (``algorithm.advantage``): ``ESTIMATORS`` maps each name to a
function of the step's batch (``AdvantageInputs``) returning ``AdvantageOutput``.

Shapes: B trajectories (all prompts of a step), T response tokens (response-aligned: position
0 is the first response token, where the rollout tree's ``branch_pos`` counts from).

Registered here (the maths lives in ``advantages``):

* ``grpo`` / ``arpo_soft``: GRPO per prompt, broadcast to every model token (soft attribution:
  a shared prefix counts once per trajectory holding it). Identical numbers.
* ``arpo_hard``: a token node shared by several trajectories gets the mean of their
  advantages and weight 1 / multiplicity (counted once).
* ``reinforce_pp``: REINFORCE++-baseline (group mean removed, global token whitening).

``tree_grpo`` registers ``tree``, ``tree_inner`` and ``tree_2norm`` (Tree-GRPO). Adding an
estimator: one module with a function decorated ``@register_estimator("name")`` and its import
in ``algorithms/__init__.py``; ``algorithm.advantage: name`` then selects it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax.numpy as jnp

from arpo_jax.algorithms import advantages as adv_lib
from arpo_jax.algorithms import tree as tree_lib

Array = jnp.ndarray


class AdvantageInputs(NamedTuple):
    """One step's batch as the estimators see it (device or numpy arrays of any int / float
    dtype, e.g. the trainer's ``TrajectoryBatch`` arrays as they are; ``compute_advantages``
    converts them once: float32 rewards, int32 ids).

    rewards: [B] float sequence rewards. groups: [B] int prompt id. parent: [B] int batch index
    of the trajectory b was forked from (-1: a global sample). branch_pos: [B] int response
    position of the fork. mask: [B, T] loss mask (1 on model tokens). tree_ids: optional [B] int
    tree of each trajectory; None: the root ancestor's batch index (``tree.tree_roots``).
    """

    rewards: Array
    groups: Array
    parent: Array
    branch_pos: Array
    mask: Array
    tree_ids: Array | None = None


class AdvantageOutput(NamedTuple):
    """sequence [B] (logged per trajectory), tokens [B, T] and weights [B, T] (the loss's
    ``token_weights``), both 0 where the mask is 0."""

    sequence: Array
    tokens: Array
    weights: Array


@dataclasses.dataclass(frozen=True)
class EstimatorOptions:
    """eps: added to group stds (release 1e-6). norm_by_std: divide by the group std (False:
    Dr.GRPO-style centring; estimators that always normalise ignore it)."""

    eps: float = 1e-6
    norm_by_std: bool = True


Estimator = Callable[[AdvantageInputs, EstimatorOptions], AdvantageOutput]
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Function decorator: makes ``fn(inputs, options) -> AdvantageOutput`` ``algorithm.advantage: name``."""

    def deco(fn: Estimator) -> Estimator:
        if name in ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return deco


def check_estimator(name: str) -> None:
    """Raises ``ValueError`` (one line, naming the key and the choices) for an unknown name."""
    if name not in ESTIMATORS:
        raise ValueError(f"algorithm.advantage must be one of {tuple(sorted(ESTIMATORS))}, got {name!r}")


def compute_advantages(name: str, inputs: AdvantageInputs, options: EstimatorOptions = EstimatorOptions()
                       ) -> AdvantageOutput:
    """The estimator ``name`` applied to ``inputs`` (arrays converted to jnp, float32 rewards)."""
    check_estimator(name)
    inputs = AdvantageInputs(
        jnp.asarray(inputs.rewards, jnp.float32), jnp.asarray(inputs.groups, jnp.int32),
        jnp.asarray(inputs.parent, jnp.int32), jnp.asarray(inputs.branch_pos, jnp.int32), jnp.asarray(inputs.mask),
        None if inputs.tree_ids is None else jnp.asarray(inputs.tree_ids, jnp.int32))
    return ESTIMATORS[name](inputs, options)


def tree_ids_of(inputs: AdvantageInputs) -> Array:
    """[B] tree of each trajectory: ``inputs.tree_ids`` or the batch index of its root."""
    return inputs.tree_ids if inputs.tree_ids is not None else tree_lib.tree_roots(inputs.parent)


def broadcast(seq: Array, mask: Array) -> AdvantageOutput:
    """Sequence advantages [B] on every model token, weight 1 (soft attribution)."""
    return AdvantageOutput(seq, adv_lib.soft_token_advantages(seq, mask), mask.astype(jnp.float32))


def _grpo_seq(inputs: AdvantageInputs, opt: EstimatorOptions) -> Array:
    return adv_lib.grpo_advantages(inputs.rewards, inputs.groups, eps=opt.eps, normalize_std=opt.norm_by_std)


@register_estimator("grpo")
@register_estimator("arpo_soft")
def grpo(inputs: AdvantageInputs, opt: EstimatorOptions) -> AdvantageOutput:
    """GRPO per prompt (verl), broadcast: ARPO's soft attribution."""
    return broadcast(_grpo_seq(inputs, opt), inputs.mask)


@register_estimator("arpo_hard")
def arpo_hard(inputs: AdvantageInputs, opt: EstimatorOptions) -> AdvantageOutput:
    """GRPO per prompt; shared token nodes get their trajectories' mean, weight 1 / multiplicity."""
    seq = _grpo_seq(inputs, opt)
    tok, weights = adv_lib.hard_token_advantages(seq, inputs.parent, inputs.branch_pos, inputs.mask)
    return AdvantageOutput(seq, tok, weights)


@register_estimator("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs, opt: EstimatorOptions) -> AdvantageOutput:
    """REINFORCE++-baseline token advantages; the sequence values logged are GRPO's."""
    tok = adv_lib.reinforce_pp_token_advantages(inputs.rewards, inputs.mask, inputs.groups)
    return AdvantageOutput(_grpo_seq(inputs, opt), tok, inputs.mask.astype(jnp.float32))
