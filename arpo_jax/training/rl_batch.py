"""From a rollout to an update: rewards, advantages (GRPO / ARPO soft / ARPO hard /
REINFORCE++), the padded ``PolicyBatch`` arrays and the step's metrics over all processes.

Layout: row b is prompt + response of trajectory b, right-padded to T (a power-of-two bucket,
so the update compiles once per bucket). Advantages are computed on response-aligned [B, Tr]
arrays (where the rollout tree's ``branch_pos`` lives) and shifted into place. Advantages
only mix the trajectories of one prompt, so a process that rolled out whole prompts computes
them alone, exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from arpo_jax.algorithms import advantages as adv_lib
from arpo_jax.rewards import RewardConfig, RewardResult, reward_for
from arpo_jax.rollout import RolloutResult
from arpo_jax.rollout.stats import rollout_stats
from arpo_jax.rollout.trajectory import Trajectory, tree_arrays
from arpo_jax.sampling.config import bucket
from arpo_jax.training.distributed import allgather_objects
from arpo_jax.training.rl_config import AlgorithmConfig


def score_trajectories(trajs: Sequence[Trajectory], examples: Sequence, config: RewardConfig) -> list[RewardResult]:
    """The reward of every trajectory (``examples[traj.prompt_index]`` holds the answers). A
    reward function that raises on model text is a bug to report, not a reason to crash the
    run: the trajectory then scores ``config.format_penalty`` with the error as its reason."""
    out = []
    for t in trajs:
        try:
            out.append(reward_for(examples[t.prompt_index], t.text, config))
        except Exception as e:  # noqa: BLE001 - model output must never crash the loop
            out.append(RewardResult(score=config.format_penalty, name="error", format_ok=False,
                                    reason=f"reward raised {type(e).__name__}: {e}"))
    return out


def response_arrays(trajs: Sequence[Trajectory]) -> dict[str, np.ndarray]:
    """Response-aligned [B, Tr] tokens, mask, logprobs, entropies (zero-padded)."""
    tr = max((len(t.tokens) for t in trajs), default=1) or 1
    out = {k: np.zeros((len(trajs), tr), dt) for k, dt in
           (("tokens", np.int32), ("mask", np.int32), ("logprobs", np.float32), ("entropies", np.float32))}
    for i, t in enumerate(trajs):
        for k, v in t.arrays().items():
            out[k][i, : len(v)] = v
    return out


def advantages(trajs: Sequence[Trajectory], rewards: np.ndarray, cfg: AlgorithmConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence advantages [B], token advantages [B, Tr], token weights [B, Tr]), response-aligned.

    grpo / arpo_soft: GRPO over each prompt's trajectories, every model token of b gets
    A_b (soft: shared prefixes count once per trajectory holding them). arpo_hard: a token
    shared by several trajectories of the tree gets the mean of their advantages and weight
    1 / multiplicity (counted once). reinforce_pp: REINFORCE++-baseline whitening.
    """
    resp = response_arrays(trajs)
    mask = jnp.asarray(resp["mask"])
    groups = jnp.asarray([t.prompt_index for t in trajs], jnp.int32)
    r = jnp.asarray(rewards, jnp.float32)
    seq = adv_lib.grpo_advantages(r, groups, eps=cfg.eps, normalize_std=cfg.norm_by_std)
    weights = mask.astype(jnp.float32)
    if cfg.advantage in ("grpo", "arpo_soft"):
        tok = adv_lib.soft_token_advantages(seq, mask)
    elif cfg.advantage == "arpo_hard":
        parent, branch_pos = tree_arrays(list(trajs))
        tok, weights = adv_lib.hard_token_advantages(seq, jnp.asarray(parent), jnp.asarray(branch_pos), mask)
    elif cfg.advantage == "reinforce_pp":
        tok = adv_lib.reinforce_pp_token_advantages(r, mask, groups)
    else:
        raise ValueError(f"algorithm.advantage: unknown {cfg.advantage!r}")
    return np.asarray(seq), np.asarray(tok), np.asarray(weights)


def policy_arrays(trajs: Sequence[Trajectory], token_adv: np.ndarray, weights: np.ndarray, pad_id: int,
                  *, min_len: int = 64, max_len: int | None = None, rows: int | None = None,
                  length: int | None = None) -> dict[str, np.ndarray]:
    """Padded [B, T] arrays for ``make_policy_batch``: tokens, attention_mask, loss_mask,
    old_logprobs, advantages, token_weights. T is a power-of-two bucket >= min_len (or exactly
    ``length``, e.g. agreed by all processes); ``rows`` pads the batch with empty rows (all
    masks 0: they add nothing to any loss sum or denominator) to a fixed count."""
    lengths = [len(t.prompt_tokens) + len(t.tokens) for t in trajs]
    longest = max(lengths, default=1)
    cap = max_len or max(longest, min_len)
    t_len = length or bucket(longest, min_len, max(cap, longest))
    if t_len < longest:
        raise ValueError(f"length {t_len} is shorter than the longest sequence ({longest})")
    b = rows or len(trajs)
    out = dict(tokens=np.full((b, t_len), pad_id, np.int32), attention_mask=np.zeros((b, t_len), np.int32),
               loss_mask=np.zeros((b, t_len), np.float32), old_logprobs=np.zeros((b, t_len), np.float32),
               advantages=np.zeros((b, t_len), np.float32), token_weights=np.zeros((b, t_len), np.float32))
    for i, t in enumerate(trajs):
        p, n = len(t.prompt_tokens), len(t.tokens)
        out["tokens"][i, :p] = t.prompt_tokens
        out["tokens"][i, p:p + n] = t.tokens
        out["attention_mask"][i, :p + n] = 1
        m = np.asarray(t.mask, np.float32)
        out["loss_mask"][i, p:p + n] = m
        out["old_logprobs"][i, p:p + n] = np.asarray(t.logprobs, np.float32) * m
        out["advantages"][i, p:p + n] = token_adv[i, :n]
        out["token_weights"][i, p:p + n] = weights[i, :n]
    return out


def minibatch_groups(trajs: Sequence[Trajectory], num_groups: int, offset: int = 0) -> list[list[int]]:
    """Indices of ``trajs`` in each mini-batch: the prompt at position q of the step's prompt
    list (``offset + prompt_index``) goes to mini-batch q mod ``num_groups``. Strided, so every
    process's contiguous share of the prompts contributes equally to every mini-batch."""
    return [[j for j, t in enumerate(trajs) if (offset + t.prompt_index) % num_groups == k]
            for k in range(num_groups)]


def reward_metrics(results: Sequence[RewardResult], trajs: Sequence[Trajectory]) -> dict[str, float]:
    """reward/mean, std, accuracy, format_ok and solved_prompts (some trajectory correct)."""
    scores = np.asarray([r.score for r in results], np.float64)
    correct = [float(r.correct if r.correct is not None else r.score >= 1.0) for r in results]
    out = {"reward/mean": scores.mean(), "reward/std": scores.std(), "reward/accuracy": float(np.mean(correct)),
           "reward/format_ok": float(np.mean([r.format_ok for r in results]))}
    by_prompt: dict[int, list[float]] = {}
    for t, c in zip(trajs, correct):
        by_prompt.setdefault(t.prompt_index, []).append(c)
    out["reward/solved_prompts"] = float(np.mean([max(v) for v in by_prompt.values()]))
    return out


@dataclasses.dataclass
class StepRollout:
    """A step's rollout over all processes (what process 0 logs and dumps): trajectories with
    ``prompt_index`` = position in the step's prompt list and unique uids, in process order;
    their rewards and sequence advantages; the rollout metrics over all of them."""

    trajectories: list[Trajectory]
    rewards: list[RewardResult]
    advantages: np.ndarray
    stats: dict[str, float]


def _slim(t: Trajectory, offset: int) -> Trajectory:
    """What metrics and dumps read, compact for the gather: arrays, no log-probs or prompt ids."""
    return dataclasses.replace(t, prompt_index=offset + t.prompt_index, prompt_tokens=[], logprobs=[],
                               topk_entropies=[], tokens=np.asarray(t.tokens, np.int32),
                               mask=np.asarray(t.mask, np.int32), entropies=np.asarray(t.entropies, np.float64))


def gather_rollout(result: RolloutResult, rewards: list[RewardResult], seq_adv: np.ndarray, offset: int,
                   num_prompts: int) -> StepRollout:
    """Every process's rollout of its share of the step (prompts ``offset`` …), combined; one
    process: its own, unchanged. Several (a collective): ``rollout_stats`` recomputed over all
    trajectories and decisions, with the slowest process's times and summed sampler counters."""
    if jax.process_count() == 1:
        return StepRollout(result.trajectories, rewards, seq_adv, result.stats)
    parts = allgather_objects(([_slim(t, offset) for t in result.trajectories], result.decisions, rewards, seq_adv,
                               result.stats, offset))
    trajs, decisions, all_rewards, advs, timing, sampler, cut = [], [], [], [], {}, {}, 0
    for local, local_decisions, local_rewards, adv, stats, start in parts:
        base = len(trajs)
        for t in local:  # uids unique over the step, parents follow
            t.uid, t.parent = base + t.uid, base + t.parent if t.parent >= 0 else -1
        trajs += local
        decisions += [dict(d, uid=base + d["uid"], prompt_index=start + d["prompt_index"]) for d in local_decisions]
        all_rewards += local_rewards
        advs.append(adv)
        cut += int(stats.get("rollout/prompts_truncated", 0))
        for k, v in stats.items():
            if k.startswith("rollout/time/"):
                key = k.removeprefix("rollout/time/")
                timing[key] = max(timing.get(key, 0.0), v)
            elif k.startswith("rollout/sampler/"):
                key = k.removeprefix("rollout/sampler/")
                sampler[key] = sampler.get(key, 0.0) + v
    stats = rollout_stats(trajs, decisions, timing, sampler, num_prompts, cut)
    return StepRollout(trajs, all_rewards, np.concatenate(advs), stats)
