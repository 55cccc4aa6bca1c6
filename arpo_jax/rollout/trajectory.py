"""A trajectory as the rollout builds it: an append-only token buffer with its loss mask,
per-token sampler outputs, tool calls and its place in the prompt's rollout tree."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class ToolRecord:
    """One tool call of a trajectory. ``start``/``end``: response positions of its result."""

    tool: str
    body: str
    status: str
    ok: bool
    latency_s: float
    start: int
    end: int
    entropy_before: float = float("nan")  # mean entropy of the model tokens just before the call
    entropy_after: float = float("nan")  # mean entropy of the first k tokens after the result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN entropies — not measured — become None)."""
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Trajectory:
    """One sampled response to a prompt.

    prompt_index: which prompt (index into ``RolloutEngine.run``'s list); uid: index in the
    result's list; parent: uid of the trajectory it was forked from (-1 for a global sample);
    branch_pos: response position of the fork (its tokens [0, branch_pos) are its parent's);
    depth: forks from the root. tokens / mask / logprobs / entropies: per response token
    (mask 1 = model-generated, 0 = tool result or inserted EOS; log-prob and entropy 0 where
    mask is 0); topk_entropies: the release's per-token top-k entropy (policy arpo_release).
    obs_spans: [start, end) response positions of each tool result. finish_reason: "eos",
    "budget", "capacity", "tool_limit", "stop".
    """

    prompt_index: int
    uid: int
    prompt_tokens: list[int]
    parent: int = -1
    branch_pos: int = 0
    depth: int = 0
    tokens: list[int] = dataclasses.field(default_factory=list)
    mask: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    entropies: list[float] = dataclasses.field(default_factory=list)
    topk_entropies: list[float] = dataclasses.field(default_factory=list)
    obs_spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    tool_calls: list[ToolRecord] = dataclasses.field(default_factory=list)
    finish_reason: str = ""
    initial_entropy: float | None = None
    text: str = ""

    @property
    def num_tool_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def num_model_tokens(self) -> int:
        return int(sum(self.mask))

    def segment_start(self) -> int:
        """Response position where the current segment (since the last tool result) began."""
        return self.obs_spans[-1][1] if self.obs_spans else 0

    def add_model_tokens(self, tokens, logprobs, entropies, topk=None) -> None:
        n = len(tokens)
        self.tokens.extend(int(t) for t in tokens)
        self.mask.extend([1] * n)
        self.logprobs.extend(float(x) for x in logprobs)
        self.entropies.extend(float(x) for x in entropies)
        self.topk_entropies.extend(float(x) for x in (topk if topk is not None else np.zeros(n)))

    def add_inserted_tokens(self, tokens) -> tuple[int, int]:
        """Environment tokens (a tool result, a forced EOS): mask 0. Returns their span."""
        start, n = len(self.tokens), len(tokens)
        self.tokens.extend(int(t) for t in tokens)
        self.mask.extend([0] * n)
        self.logprobs.extend([0.0] * n)
        self.entropies.extend([0.0] * n)
        self.topk_entropies.extend([0.0] * n)
        return start, start + n

    def branch(self, uid: int, upto: int) -> "Trajectory":
        """A child sharing this trajectory's first ``upto`` response tokens (and its tool calls
        before them: ARPO branches inherit the parent's tool-call counter)."""
        return Trajectory(
            prompt_index=self.prompt_index, uid=uid, prompt_tokens=self.prompt_tokens, parent=self.uid,
            branch_pos=upto, depth=self.depth + 1, tokens=self.tokens[:upto], mask=self.mask[:upto],
            logprobs=self.logprobs[:upto], entropies=self.entropies[:upto],
            topk_entropies=self.topk_entropies[:upto],
            obs_spans=[s for s in self.obs_spans if s[1] <= upto],
            tool_calls=[dataclasses.replace(c) for c in self.tool_calls if c.end <= upto],
            initial_entropy=self.initial_entropy)

    def arrays(self) -> dict[str, np.ndarray]:
        """tokens int32, mask int32, logprobs / entropies float32, all [T]."""
        return dict(tokens=np.asarray(self.tokens, np.int32), mask=np.asarray(self.mask, np.int32),
                    logprobs=np.asarray(self.logprobs, np.float32), entropies=np.asarray(self.entropies, np.float32))


def trajectory_record(traj: Trajectory, *, step: int = 0, reward: float | None = None,
                      advantage: float | None = None, prompt_text: str = "", extra: dict | None = None) -> dict:
    """The JSON-ready dump record of a trajectory (one line of ``rollouts/step_*.jsonl``): its
    text, tree position, per-token entropies and mask, tool calls with their results' spans
    and the entropies around them, reward and advantage."""
    rec = dict(step=step, prompt_index=traj.prompt_index, uid=traj.uid, parent=traj.parent,
               branch_pos=traj.branch_pos, depth=traj.depth, prompt=prompt_text, response=traj.text,
               reward=reward, advantage=advantage, finish_reason=traj.finish_reason,
               num_tool_calls=traj.num_tool_calls, initial_entropy=traj.initial_entropy,
               mask=[int(m) for m in traj.mask], entropies=[round(float(e), 4) for e in traj.entropies],
               obs_spans=[list(s) for s in traj.obs_spans], tool_calls=[c.to_dict() for c in traj.tool_calls])
    if extra:
        rec.update(extra)
    return rec


def tree_arrays(trajectories: list[Trajectory]) -> tuple[np.ndarray, np.ndarray]:
    """(parent [B], branch_pos [B]) in batch order, parents as batch indices (uid order)."""
    index = {t.uid: i for i, t in enumerate(trajectories)}
    parent = np.asarray([index[t.parent] if t.parent >= 0 else -1 for t in trajectories], np.int32)
    branch_pos = np.asarray([t.branch_pos for t in trajectories], np.int32)
    return parent, branch_pos
