"""``rollout.policy: aepo``: AEPO's entropy-balanced adaptive rollout (Dong et al., arXiv
2510.14545; BEYOND.md §1.3–1.4), on top of ARPO's released rule (``arpo_release``: release
segment entropy, decision when a segment ends with a tool call, fork right after the result,
one refill per round, the optional stale-H_initial bug).

* Branch rule with the consecutive-branch penalty: branch iff
  clip((U + w·ΔH)·max(0, 1 − c·l), 0, 1) ≥ τ (w ``entropy_weight``, τ ``threshold``, c
  ``AepoOptions.penalty_slope``, release 0.05). ``l`` counts consecutive branching:
  - ``consecutive_scope: prompt`` (the release; default): per prompt, in rounds. The release's
    round is one lock-step generate call over a prompt's chains, so a chain's round is its
    tool-call step; l at step s = the number of steps s − 1, s − 2, … in a row at which some
    trajectory of the prompt branched (what is known when the decision is made);
  - ``consecutive_scope: path`` (the paper's wording): the number of consecutive branching
    decisions on the trajectory's own path (its ancestors' decisions before its fork included).
* Entropy pre-monitoring (``enable_dynamic_rollouts``; the released scripts: off): the engine
  asks ``initial_samples_for(root_entropy, rng)`` with the exact next-token entropy of the
  prompt; m = clip(floor(k·σ(β·(H_root − H̄_tool))) + 1, 1, k). H̄_tool: ``premonitor_tool_entropy``
  if set, else the running mean exact entropy (first k tokens) of the tool-call segments this
  policy has seen (no probe rollout; H_root itself before any). Both are per-token nats, put on
  the release's scale (× entropy_tokens / ln|V|) for β. Off: m = clip(N, 1, M).

The maths is ``arpo_jax.algorithms.aepo``. ``AepoOptions`` come from the constructor's ``options``
if given, else ``RolloutConfig.aepo`` (the YAML's ``rollout.aepo:`` section; defaults: the release).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import numpy as np

from arpo_jax.algorithms.aepo import aepo_branch_decisions, aepo_branch_probability, consecutive_run
from arpo_jax.algorithms.aepo import premonitor_initial_samples
from arpo_jax.algorithms.branching import mean_entropy
from arpo_jax.rollout.policies.arpo_release import ArpoReleasePolicy
from arpo_jax.rollout.policies.base import register
from arpo_jax.rollout.trajectory import Trajectory

CONSECUTIVE_SCOPES = ("prompt", "path", "chain")
MAX_TRACKED_PROMPTS = 4096  # per-prompt-run state kept (a run's prompts are far fewer)


@dataclasses.dataclass(frozen=True)
class AepoOptions:
    """AEPO's knobs beyond ARPO's (docs/beyond.md).

    penalty_slope: c in max(0, 1 − c·l) (release 0.05). consecutive_scope: "prompt" (release)
    or "path" (paper). enable_dynamic_rollouts: entropy pre-monitoring (released scripts:
    False). premonitor_beta: β (release 0.5). premonitor_tool_entropy: H̄_tool in nats per token
    (None: the running mean of the tool-call segments seen).
    """

    penalty_slope: float = 0.05
    consecutive_scope: str = "prompt"
    enable_dynamic_rollouts: bool = False
    premonitor_beta: float = 0.5
    premonitor_tool_entropy: float | None = None

    def __post_init__(self):
        if self.consecutive_scope not in CONSECUTIVE_SCOPES:
            raise ValueError(f"rollout.aepo.consecutive_scope must be one of {CONSECUTIVE_SCOPES}, "
                             f"got {self.consecutive_scope!r}")
        if self.penalty_slope < 0:
            raise ValueError(f"rollout.aepo.penalty_slope must be >= 0, got {self.penalty_slope}")


class _PromptState:
    """Consecutive-branch bookkeeping of one prompt run: steps with a branch, and each
    trajectory's decisions as (response position, branched)."""

    def __init__(self):
        self.branched_steps: set[int] = set()
        self.decisions: dict[int, list[tuple[int, bool]]] = {}
        self.parents: dict[int, tuple[int, int]] = {}  # uid -> (parent uid, branch_pos)

    def path_decisions(self, uid: int, upto: int | None = None) -> list[bool]:
        """The branched flags of the decisions on ``uid``'s path, oldest first, before ``upto``."""
        own = [b for pos, b in self.decisions.get(uid, []) if upto is None or pos < upto]
        parent, branch_pos = self.parents.get(uid, (-1, 0))
        return (self.path_decisions(parent, branch_pos) if parent >= 0 else []) + own


@register("aepo")
class AepoPolicy(ArpoReleasePolicy):
    """AEPO: ARPO's released rule with the consecutive-branch penalty and pre-monitoring."""

    def __init__(self, cfg, vocab_size: int, options: AepoOptions | None = None):
        super().__init__(cfg, vocab_size)
        self.options = options or getattr(cfg, "aepo", None) or AepoOptions()
        self._prompts: OrderedDict[int, tuple[np.random.Generator, _PromptState]] = OrderedDict()
        self._tool_entropy_sum, self._tool_entropy_count = 0.0, 0

    # ------------------------------------------------------------------ pre-monitoring
    @property
    def wants_root_entropy(self) -> bool:
        return self.options.enable_dynamic_rollouts

    @property
    def initial_samples(self) -> int:
        return min(max(self.cfg.initial_rollouts, 1), self.cfg.total_rollouts)  # the #42 fix: clip to [1, M]

    def tool_entropy(self) -> float | None:
        """H̄_tool (nats per token): the configured value or the running mean seen so far."""
        if self.options.premonitor_tool_entropy is not None:
            return self.options.premonitor_tool_entropy
        return self._tool_entropy_sum / self._tool_entropy_count if self._tool_entropy_count else None

    def initial_samples_for(self, root_entropy: float | None, rng: np.random.Generator) -> int:
        """m from entropy pre-monitoring (no draw from ``rng``); N when dynamic rollouts are off."""
        if not self.options.enable_dynamic_rollouts or root_entropy is None:
            return self.initial_samples
        h_tool = self.tool_entropy()
        h_tool = root_entropy if h_tool is None else h_tool
        scale = self.cfg.entropy_tokens / math.log(self.vocab_size)  # per-token nats -> release scale
        m = premonitor_initial_samples(root_entropy * scale, h_tool * scale, self.cfg.total_rollouts,
                                       self.options.premonitor_beta)
        return int(m)

    # ------------------------------------------------------------------------ branching
    def _state(self, rng: np.random.Generator) -> _PromptState:
        """The bookkeeping of the prompt run ``rng`` belongs to (each run has its own stream)."""
        key = id(rng)
        if key not in self._prompts:
            self._prompts[key] = (rng, _PromptState())  # holding rng keeps its id unique
            while len(self._prompts) > MAX_TRACKED_PROMPTS:
                self._prompts.popitem(last=False)
        return self._prompts[key][1]

    def consecutive(self, state: _PromptState, traj: Trajectory) -> int:
        """l for a decision of ``traj`` at its next tool-call step."""
        if self.options.consecutive_scope == "prompt":
            return consecutive_run(state.branched_steps, traj.num_tool_calls)
        if self.options.consecutive_scope == "chain":
            recent_first = [b for _, b in state.decisions.get(traj.uid, [])][::-1]
        else:
            recent_first = state.path_decisions(traj.uid)[::-1]
        return recent_first.index(False) if False in recent_first else len(recent_first)

    def on_segment_end(self, traj: Trajectory, slot: int, start: int, rng: np.random.Generator) -> dict:
        cfg, opt = self.cfg, self.options
        state = self._state(rng)
        if traj.parent >= 0:
            state.parents.setdefault(traj.uid, (traj.parent, traj.branch_pos))
        h_exact = mean_entropy(traj.entropies[start:], traj.mask[start:], cfg.entropy_tokens)
        self._tool_entropy_sum += h_exact
        self._tool_entropy_count += 1
        h = self.segment_entropy(traj, start, len(traj.tokens))
        h0 = traj.initial_entropy if traj.initial_entropy is not None else h
        if cfg.stale_entropy_baseline:
            h0 = self.stale_initial.get(slot, h0)
        delta = h - h0
        consec = self.consecutive(state, traj)
        u = float(rng.random())
        branch = bool(aepo_branch_decisions(u, delta, consec, cfg.entropy_weight, cfg.threshold, opt.penalty_slope))
        prob = float(aepo_branch_probability(delta, consec, cfg.entropy_weight, cfg.threshold, opt.penalty_slope))
        state.decisions.setdefault(traj.uid, []).append((len(traj.tokens), branch))
        if branch:
            state.branched_steps.add(traj.num_tool_calls)
        record = self.decision(traj, entropy=h, initial_entropy=h0, delta_h=delta, probability=prob, uniform=u,
                               branch=branch)
        record["consecutive"] = consec
        return record

