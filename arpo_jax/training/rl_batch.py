"""From a rollout to an update: rewards, advantages (the registered estimators: GRPO, ARPO
soft / hard, REINFORCE++, Tree-GRPO), the padded ``PolicyBatch`` arrays and the step's metrics over all processes.

Layout: row b is prompt + response of trajectory b, right-padded to T (a power-of-two bucket,
so the update compiles once per bucket) or trees packed into rows (``packed_arrays``). The step's
trajectories are converted once, into a ``TrajectoryBatch``; advantages, both batch layouts and
the mini-batch split read its arrays. Advantages are computed on its response-aligned [B, Tr]
arrays (where the rollout tree's ``branch_pos`` lives) and shifted into place. Advantages
only mix the trajectories of one prompt, so a process that rolled out whole prompts computes
them alone, exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from arpo_jax.algorithms import estimators
from arpo_jax.algorithms.packing import Forest, choose_rows, first_fit, pack_forest
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


@dataclasses.dataclass
class TrajectoryBatch:
    """A step's trajectories as arrays, converted once (``from_trajectories``): the trees
    (``forest``: prompts, response ids and lengths, parent / branch_pos as batch indices, prompt
    group) and response-aligned [B, Tr] mask, log-probs and entropies. The padded and the packed
    policy batches, the mini-batch split and the token counts are all read from it."""

    forest: Forest
    mask: np.ndarray
    logprobs: np.ndarray
    entropies: np.ndarray

    @classmethod
    def from_trajectories(cls, trajs: Sequence[Trajectory]) -> "TrajectoryBatch":
        """One pass over ``trajs``: every list converted to arrays once."""
        resp = response_arrays(trajs)
        prompts = [np.asarray(t.prompt_tokens, np.int32) for t in trajs]
        prompt = np.zeros((len(trajs), max((len(x) for x in prompts), default=1) or 1), np.int32)
        for i, x in enumerate(prompts):
            prompt[i, :len(x)] = x
        parent, branch_pos = tree_arrays(list(trajs))
        forest = Forest(prompt, np.asarray([len(x) for x in prompts], np.int64), resp["tokens"],
                        np.asarray([len(t.tokens) for t in trajs], np.int64), parent, branch_pos,
                        np.asarray([t.prompt_index for t in trajs], np.int64))
        return cls(forest, resp["mask"], resp["logprobs"] * resp["mask"], resp["entropies"])

    def select(self, idx) -> "TrajectoryBatch":
        """The trajectories ``idx`` (whole trees: parents must be selected with their children)."""
        idx = np.asarray(idx, np.int64)
        f, where = self.forest, np.full(len(self.forest.length) + 1, -1, np.int64)
        where[idx] = np.arange(len(idx))
        forest = Forest(f.prompt[idx], f.prompt_len[idx], f.tokens[idx], f.length[idx], where[f.parent[idx]],
                        f.branch_pos[idx], f.group[idx])
        return TrajectoryBatch(forest, self.mask[idx], self.logprobs[idx], self.entropies[idx])

    @property
    def seq_lengths(self) -> np.ndarray:
        """[B] prompt + response tokens of each trajectory."""
        return self.forest.prompt_len + self.forest.length


def advantages(batch: TrajectoryBatch, rewards: np.ndarray, cfg: AlgorithmConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence advantages [B], token advantages [B, Tr], token weights [B, Tr]), response-aligned:
    the estimator ``cfg.advantage`` names (``arpo_jax.algorithms.estimators.ESTIMATORS``) on
    ``rewards`` [B] and the batch's prompt groups, tree (parent, branch_pos) and loss mask."""
    f = batch.forest
    inputs = estimators.AdvantageInputs(rewards=rewards, groups=f.group, parent=f.parent, branch_pos=f.branch_pos,
                                        mask=batch.mask)
    out = estimators.compute_advantages(cfg.advantage, inputs, estimators.EstimatorOptions(cfg.eps, cfg.norm_by_std))
    return np.asarray(out.sequence), np.asarray(out.tokens), np.asarray(out.weights)


def _at_prompt_offset(resp: np.ndarray, batch: TrajectoryBatch, rows: int, length: int) -> np.ndarray:
    """Response-aligned [B, Tr] values → [rows, length], response t of b at column prompt_len[b] + t."""
    f = batch.forest
    out = np.zeros((rows, length), resp.dtype)
    t = np.arange(resp.shape[1])[None, :]
    b, col = np.nonzero(t < f.length[:, None])
    out[b, f.prompt_len[b] + col] = resp[b, col]
    return out


def loss_arrays(batch: TrajectoryBatch, token_adv: np.ndarray, weights: np.ndarray, rows: int, length: int
                ) -> dict[str, np.ndarray]:
    """[rows, length] loss_mask, old_logprobs, advantages, token_weights (rows past B: zeros)."""
    return dict(loss_mask=_at_prompt_offset(batch.mask.astype(np.float32), batch, rows, length),
                old_logprobs=_at_prompt_offset(batch.logprobs, batch, rows, length),
                advantages=_at_prompt_offset(np.asarray(token_adv, np.float32), batch, rows, length),
                token_weights=_at_prompt_offset(np.asarray(weights, np.float32), batch, rows, length))


def policy_arrays(batch: TrajectoryBatch, token_adv: np.ndarray, weights: np.ndarray, pad_id: int,
                  *, min_len: int = 64, max_len: int | None = None, rows: int | None = None,
                  length: int | None = None) -> dict[str, np.ndarray]:
    """Padded [B, T] arrays for ``make_policy_batch``: tokens, attention_mask, loss_mask,
    old_logprobs, advantages, token_weights. T is a power-of-two bucket >= min_len (or exactly
    ``length``, e.g. agreed by all processes); ``rows`` pads the batch with empty rows (all
    masks 0: they add nothing to any loss sum or denominator) to a fixed count."""
    f, lengths = batch.forest, batch.seq_lengths
    longest = int(lengths.max(initial=1))
    t_len = length or bucket(longest, min_len, max(max_len or max(longest, min_len), longest))
    if t_len < longest:
        raise ValueError(f"length {t_len} is shorter than the longest sequence ({longest})")
    b = rows or len(lengths)
    tokens = _at_prompt_offset(f.tokens, batch, b, t_len)
    in_prompt = np.arange(f.prompt.shape[1])[None, :] < f.prompt_len[:, None]
    pb, pt = np.nonzero(in_prompt)
    tokens[pb, pt] = f.prompt[pb, pt]
    attention = np.arange(t_len)[None, :] < np.pad(lengths, (0, b - len(lengths)))[:, None]
    tokens[~attention] = pad_id
    return dict(tokens=tokens, attention_mask=attention.astype(np.int32),
                **loss_arrays(batch, token_adv, weights, b, t_len))


def minibatch_groups(prompt_index: np.ndarray, num_groups: int, offset: int = 0) -> list[np.ndarray]:
    """Trajectory indices of each mini-batch: the prompt at position q of the step's prompt
    list (``offset + prompt_index``) goes to mini-batch q mod ``num_groups``. Strided, so every
    process's contiguous share of the prompts contributes equally to every mini-batch."""
    q = (offset + np.asarray(prompt_index)) % num_groups
    return [np.flatnonzero(q == k) for k in range(num_groups)]


def tree_micro_batches(batch: TrajectoryBatch, num_micro: int) -> list[np.ndarray]:
    """Trajectory indices of each of ``num_micro`` micro-batches of whole trees: largest tree
    first, each to the micro-batch holding the fewest tokens among those with fewer than
    ceil(trees / num_micro) trees (so trajectory counts stay even)."""
    trees, sizes = batch.forest.trees(), batch.forest.tree_sizes()
    cap = -(-len(trees) // num_micro)
    load, parts = np.zeros(num_micro), [[] for _ in range(num_micro)]
    for i in np.argsort(-sizes, kind="stable"):
        k = min((k for k in range(num_micro) if len(parts[k]) < cap), key=lambda k: load[k])
        parts[k].append(trees[i])
        load[k] += sizes[i]
    return [np.sort(np.concatenate(x)) if x else np.zeros(0, np.int64) for x in parts]


@dataclasses.dataclass(frozen=True)
class PackLayout:
    """Shapes of a packed mini-batch: the micro-batches' trajectories, packed ``rows`` of
    ``row_len`` and ``traj_rows`` trajectory slots of ``seq_len`` per micro-batch."""

    micro: list[np.ndarray]
    row_len: int
    rows: int
    seq_len: int
    traj_rows: int


def packed_rows_needed(batch: TrajectoryBatch, micro: list[np.ndarray], row_len: int) -> int:
    """Most packed rows of ``row_len`` any micro-batch needs (first-fit decreasing)."""
    return max((first_fit(batch.select(m).forest.tree_sizes(), row_len)[2] for m in micro), default=1) or 1


def pack_layout(batch: TrajectoryBatch, num_micro: int, min_len: int = 64, row_multiple: int = 1,
                reuse=()) -> PackLayout:
    """This batch's own layout: each micro-batch's trees first-fit into the same rows, the row
    length and count chosen to waste the fewest slots (``choose_rows``: ``length_bucket`` lengths,
    ``row_bucket`` counts, a multiple of ``row_multiple``; a ``reuse`` shape within 5 % of the
    tokens), a power-of-two sequence length (processes agree on the maxima: ``RLRunner``)."""
    micro = tree_micro_batches(batch, num_micro)
    row_len, rows = choose_rows([batch.select(m).forest.tree_sizes() for m in micro], min_len,
                                multiple=row_multiple, reuse=reuse)
    return PackLayout(micro, row_len, rows, bucket(int(batch.seq_lengths.max(initial=1)), min_len, 1 << 40),
                      max((len(m) for m in micro), default=1) or 1)


def packed_arrays(batch: TrajectoryBatch, token_adv: np.ndarray, weights: np.ndarray, layout: PackLayout,
                  pad_id: int = 0, row_base: int = 0) -> dict[str, np.ndarray]:
    """Arrays for ``make_packed_policy_batch``: K = len(layout.micro) micro-batches, the trees of
    micro-batch k packed (``pack_forest``) into rows k, k + K, … and its trajectories in slots
    k, k + K, … (as ``split_micro_batches`` splits them), the gather map's rows counted within the
    micro-batch from ``row_base``; [B, T] loss arrays as ``policy_arrays``'."""
    k_num, lay = len(layout.micro), layout
    shape_r, shape_t = (k_num * lay.rows, lay.row_len), (k_num * lay.traj_rows, lay.seq_len)
    out = {name: np.zeros(shape_r, np.int32) for name in ("tokens", "positions", "key_end", "pred")}
    out.update({name: np.zeros(shape_t, np.int32) for name in ("row", "col", "valid")})
    out.update({name: np.zeros(shape_t, np.float32) for name in ("loss_mask", "old_logprobs", "advantages",
                                                                  "token_weights")})
    for k, idx in enumerate(layout.micro):
        part = batch.select(idx)
        packed = pack_forest(part.forest, lay.row_len, lay.rows, lay.seq_len, pad_id, row_base)
        for name in ("tokens", "positions", "key_end", "pred"):
            out[name][k::k_num] = getattr(packed, name)
        n = len(idx)
        for name in ("row", "col", "valid"):
            out[name][k::k_num][:n] = getattr(packed, name)
        for name, v in loss_arrays(part, token_adv[idx], weights[idx], lay.traj_rows, lay.seq_len).items():
            out[name][k::k_num] = v
    return out


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
