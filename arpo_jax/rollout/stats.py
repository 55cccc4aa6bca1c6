"""Rollout metrics: lengths, tool use, branching (and its concentration) and entropy around tool
results."""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from arpo_jax.algorithms.tree import branch_concentration
from arpo_jax.rollout.trajectory import Trajectory, tree_arrays

MAX_DEPTH_BIN = 8


def _mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return float(np.mean(values)) if values else float("nan")


def branch_concentration_metrics(trajs: Sequence[Trajectory], top: int = 3) -> tuple[float, float]:
    """AEPO's collapse measure (BEYOND.md §1.4): the share of a prompt's branches sourced by its
    ``top`` most-branching trajectories, (mean over the prompts with a branch, pooled: Σ top
    sources / Σ branches); NaN without branches."""
    if not trajs:
        return float("nan"), float("nan")
    parent, _ = tree_arrays(list(trajs))
    groups = np.asarray([t.prompt_index for t in trajs])
    share = branch_concentration(parent, groups, top)  # [G], np.unique(groups) order
    counts = np.asarray([np.sum(parent[groups == g] >= 0) for g in np.unique(groups)], np.float64)
    has = counts > 0
    if not has.any():
        return float("nan"), float("nan")
    return float(np.mean(share[has])), float(np.sum(share[has] * counts[has]) / counts[has].sum())


def rollout_stats(trajs: Sequence[Trajectory], decisions: Sequence[dict], timing: Mapping[str, float],
                  sampler_delta: Mapping[str, int], num_prompts: int, prompts_cut: int = 0,
                  scheduling: Mapping[str, float] | None = None) -> dict[str, float]:
    """Flat metrics of one rollout (keys prefixed ``rollout/``). ``scheduling``: the engine's
    counters (branches granted / made / returned / dropped, prompt prefills, evictions, ...)."""
    out: dict[str, float] = {}
    n = max(len(trajs), 1)
    model_tokens = sum(t.num_model_tokens for t in trajs)
    # Tokens inherited from a parent were generated once: count each tree token once.
    generated = sum(t.num_model_tokens - int(np.sum(t.mask[: t.branch_pos])) for t in trajs)
    out["trajectories"] = len(trajs)
    out["trajectories_per_prompt"] = len(trajs) / max(num_prompts, 1)
    out["response_length"] = _mean([len(t.tokens) for t in trajs])
    out["response_length_max"] = float(max((len(t.tokens) for t in trajs), default=0))
    out["model_tokens"] = model_tokens / n
    out["generated_tokens"] = generated
    out["prompts_truncated"] = prompts_cut
    calls = Counter(c.tool or "invalid" for t in trajs for c in t.tool_calls)
    out["tool_calls_per_traj"] = sum(calls.values()) / n
    for tool, c in calls.items():
        out[f"tool_calls_per_traj/{tool}"] = c / n
    failures = sum(not c.ok for t in trajs for c in t.tool_calls)
    out["tool_failure_rate"] = failures / max(sum(calls.values()), 1)
    # Tool calls actually executed (a branch re-uses its parent's calls before the fork).
    out["tool_calls_executed"] = sum(sum(c.start >= t.branch_pos for c in t.tool_calls) for t in trajs)
    for reason, c in Counter(t.finish_reason for t in trajs).items():
        out[f"finish/{reason}"] = c / n
    branches = [t for t in trajs if t.parent >= 0]
    out["branches_per_prompt"] = len(branches) / max(num_prompts, 1)
    out["branch_concentration"], out["branch_concentration_pooled"] = branch_concentration_metrics(trajs)
    depth = Counter(min(t.depth, MAX_DEPTH_BIN) for t in trajs)
    for d in range(MAX_DEPTH_BIN + 1):
        if depth[d]:
            out[f"branch_depth/{d}"] = depth[d] / n
    out["branch_decisions"] = len(decisions)
    if decisions:
        out["branch_rate"] = _mean([float(d["branch"]) for d in decisions])
        out["branch_probability"] = _mean([d["probability"] for d in decisions])
        out["delta_entropy"] = _mean([d["delta_h"] for d in decisions])
    out["entropy_before_tool"] = _mean([c.entropy_before for t in trajs for c in t.tool_calls])
    out["entropy_after_tool"] = _mean([c.entropy_after for t in trajs for c in t.tool_calls])
    out["entropy_initial"] = _mean([t.initial_entropy for t in trajs if t.initial_entropy is not None])
    ent = np.concatenate([np.asarray(t.entropies)[np.asarray(t.mask, bool)] for t in trajs]) if trajs else np.zeros(0)
    out["token_entropy"] = float(ent.mean()) if ent.size else float("nan")
    for k, v in timing.items():
        out[f"time/{k}"] = float(v)
    if timing.get("generate_s"):
        out["tokens_per_s"] = generated / timing["generate_s"]
    for k, v in sampler_delta.items():
        out[f"sampler/{k}"] = float(v)
    out.update(scheduling or {})
    return {f"rollout/{k}": v for k, v in out.items()}
