"""The branching-policy interface and its registry (``rollout.policy`` → class).

A policy decides how a prompt's M trajectories come about: how many fresh samples start, when
a trajectory branches, how a prompt that ended short of M is refilled. It is a small host-side
object the engine (``RolloutEngine``) calls at fixed moments of the agent loop; it never
touches the sampler. Its entropies come from the ``Trajectory`` buffers, where the engine
copied the per-token entropies of every decode chunk it read back: a decision costs no device
call. The engine keeps the mechanics: slots, forks, the per-prompt budget (a decision's Z
branches are granted only while the prompt has fewer than M trajectories; every prompt runs
with M slots reserved, so a granted branch is always made) and the order of the prompt's
random draws.

Hooks (the engine calls the decision hooks only while the prompt has fewer than M):

* ``initial_samples``: fresh samples per prompt at the start (trajectory-level: M; ARPO: N).
* ``initial_samples_for(root_entropy, rng)``: asked once per prompt, right after its single
  prefill: how many initial samples to start (in [1, M]; default ``initial_samples``, no
  draw). ``root_entropy`` is the full-vocabulary entropy of the prompt's next-token
  distribution (``next_token_entropy`` of ``Sampler.next_logits``, at the sampling
  temperature) when the policy sets ``wants_root_entropy = True`` (one device call and
  read-back per prompt), else ``None``. An entropy-adaptive policy (AEPO) sizes the initial
  sampling here.
* ``initial_entropy(traj, slot)``: H_initial, once the trajectory's first k model tokens are
  in (or it stopped before k).
* ``on_segment_end(traj, slot, start, rng)``: a segment (from response position ``start``)
  ended with a tool call, which has been submitted. A branching decision returned here forks
  its granted branches right after the tool's result is appended.
* ``on_lookahead(traj, slot, start, rng)``: ``lookahead_tokens`` (> 0) model tokens have been
  generated after a result that ended at ``start``. Granted branches fork from the point right
  after that result (the sampler rewinds them there).
* ``refill(missing)``: all trajectories of a prompt ended ``missing`` > 0 short of M: how many
  fresh samples to start now (the hook is asked again once those have ended).
* ``expand(trajs, rng)`` (asked before ``refill``): all of a prompt's trajectories ``trajs``
  (creation order) have ended below its budget: (source trajectory, response position) pairs,
  each a new chain forked from that point of the source (a node boundary: 0, the end of the
  prompt, or the end of a tool result the source continued after); [] for none. The sources'
  slots must still hold their caches: a policy that expands sets ``holds_finished = True``
  (finished trajectories keep their slots until the prompt completes; its reservation covers
  them). Tree-GRPO's tree search.
* ``select(trajs, rng)``: the prompt has completed: the trajectories the rollout returns
  (default: all; tree search: K leaves per tree), ``parent`` / ``branch_pos`` re-pointed past
  any left out.

``budget`` (property): trajectories a prompt makes, the slots reserved for it (default M =
``total_rollouts``; tree search makes M·(1 + L·N) and may return fewer).

A decision hook returns ``None`` (no decision) or ``decision(...)``'s record, which the engine
completes with ``granted`` (branches granted) and ``returned`` (granted branches handed back
because their source ended at its tool result, out of budget) and returns in
``RolloutResult.decisions``. ``rng`` is the prompt's ``numpy.random.Generator``: draw from it
(and only from it) to keep rollouts a function of (params, prompt, seed).

Adding a policy: one module in this package with a ``BranchingPolicy`` subclass decorated with
``@register("name")``, imported in ``policies/__init__.py`` (docs/branching.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from arpo_jax.algorithms.branching import mean_entropy
from arpo_jax.rollout.trajectory import Trajectory

if TYPE_CHECKING:
    from arpo_jax.rollout.config import RolloutConfig

POLICIES: dict[str, type["BranchingPolicy"]] = {}


def register(name: str) -> Callable[[type["BranchingPolicy"]], type["BranchingPolicy"]]:
    """Class decorator: makes a ``BranchingPolicy`` subclass ``rollout.policy: name``."""

    def deco(cls: type[BranchingPolicy]) -> type[BranchingPolicy]:
        if name in POLICIES:
            raise ValueError(f"branching policy {name!r} is already registered ({POLICIES[name].__name__})")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


def make_policy(cfg: RolloutConfig, vocab_size: int) -> BranchingPolicy:
    """The policy ``cfg.policy`` names, for a tokenizer of ``vocab_size`` tokens."""
    return POLICIES[cfg.policy](cfg, vocab_size)


def next_token_entropy(logits: np.ndarray, temperature: float = 1.0) -> float:
    """Exact entropy (nats) of softmax(logits / temperature) over a logit vector [V] (-inf allowed)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max()
    p = np.exp(z)
    p /= p.sum()
    nz = p > 0
    return float(-(p[nz] * np.log(p[nz])).sum())


class BranchingPolicy:
    """M fresh samples per prompt, no branching, no refill; H (recorded as each trajectory's
    initial entropy) = mean exact entropy of a segment's first k model tokens.

    Subclasses override the hooks they need (module docstring). ``topk_entropy``: the k of the
    per-token top-k entropy the sampler must return (0: not needed).
    """

    name = ""
    topk_entropy = 0
    lookahead_tokens = 0
    wants_root_entropy = False
    holds_finished = False

    def __init__(self, cfg: RolloutConfig, vocab_size: int):
        self.cfg, self.vocab_size = cfg, vocab_size

    @classmethod
    def check_config(cls, cfg: RolloutConfig) -> None:
        """Raises ``ValueError`` for knob values the policy cannot run with."""
        if cfg.stale_entropy_baseline:
            raise ValueError(f"rollout.stale_entropy_baseline does not apply to policy {cls.name!r}")

    @staticmethod
    def check_initial_rollouts(cfg: RolloutConfig) -> None:
        if not 1 <= cfg.initial_rollouts <= cfg.total_rollouts:
            raise ValueError("rollout.initial_rollouts must be in [1, rollout.total_rollouts]")

    @property
    def budget(self) -> int:
        """Trajectories a prompt makes (slots reserved for it); ``select`` may return fewer."""
        return self.cfg.total_rollouts

    @property
    def initial_samples(self) -> int:
        return self.cfg.total_rollouts

    def initial_samples_for(self, root_entropy: float | None, rng: np.random.Generator) -> int:
        """Initial samples of a prompt whose root entropy is ``root_entropy`` (None unless
        ``wants_root_entropy``); draw only from ``rng``, the prompt's stream."""
        return self.initial_samples

    def segment_entropy(self, traj: Trajectory, start: int, end: int) -> float:
        """H of response positions [start, end): its first k model tokens."""
        return mean_entropy(traj.entropies[start:end], traj.mask[start:end], self.cfg.entropy_tokens)

    def initial_entropy(self, traj: Trajectory, slot: int) -> float:
        return self.segment_entropy(traj, 0, len(traj.tokens))

    def on_segment_end(self, traj: Trajectory, slot: int, start: int, rng: np.random.Generator) -> dict | None:
        return None

    def on_lookahead(self, traj: Trajectory, slot: int, start: int, rng: np.random.Generator) -> dict | None:
        return None

    def refill(self, missing: int) -> int:
        return 0

    def expand(self, trajs: list[Trajectory], rng: np.random.Generator) -> list[tuple[Trajectory, int]]:
        """New chains to fork once all of a prompt's ``trajs`` have ended: (source, response position)."""
        return []

    def select(self, trajs: list[Trajectory], rng: np.random.Generator) -> list[Trajectory]:
        """The completed prompt's trajectories the rollout returns (creation order kept)."""
        return trajs

    @staticmethod
    def decision(traj: Trajectory, *, entropy: float, initial_entropy: float, delta_h: float, probability: float,
                 uniform: float, branch: bool) -> dict:
        """A decision's record (``granted`` / ``returned`` are filled in by the engine)."""
        return dict(prompt_index=traj.prompt_index, uid=traj.uid, position=len(traj.tokens), entropy=entropy,
                    initial_entropy=initial_entropy, delta_h=delta_h, probability=probability, uniform=uniform,
                    branch=branch, granted=0, returned=0)
