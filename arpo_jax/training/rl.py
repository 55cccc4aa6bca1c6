"""The RL loop of ``arpo-jax train``: data → rollout → reward → advantage → update.

Each step takes ``data.prompts_per_step`` prompts, rolls them out with the configured policy
(GRPO trajectories or ARPO branching, real tools), scores them, computes advantages over each
prompt's tree and applies ``train.mini_batches × train.ppo_epochs`` jitted, sharded AdamW
updates (exact micro-batch accumulation). Checkpoints carry parameters, optimizer state, RNG,
data position and skip counters, so ``train.resume=auto`` after a kill repeats the
uninterrupted run's steps exactly (rollout randomness is a function of (seed, step)).
``RLRunner`` is RL's part of the one training loop (``training.loop``), which owns
checkpoints, resume, non-finite skips, SIGTERM, exports, logging and ``status.json``.

Multi-host (n JAX processes): every process reads the same step's prompt list and rolls out
its own whole prompts, positions [i·P/n, (i+1)·P/n), with its own tools, on a full copy of
the policy on its own devices (``local_copy``). A prompt's randomness is seeded by (seed, step,
its position in the step), so the processes together produce the trajectories one process
would. Rewards and advantages are local (a prompt's tree never spans processes). Every
process pads its rows of each mini-batch to the same count, at the length all processes
agree on, and the rows become global arrays sharded over the mesh's (data, fsdp) axes: the
update and its loss normalisation are those of one process over the whole batch. Metrics
are over all processes' trajectories; process 0 writes logs, dumps and exports.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arpo_jax.data.tokenizer import load_tokenizer
from arpo_jax.models import build_model, make_mesh
from arpo_jax.models.sharding import BATCH, rows_sharding
from arpo_jax.rollout import RolloutConfig, RolloutEngine, trajectory_record
from arpo_jax.sampling.config import bucket
from arpo_jax.tools.build import build_dispatcher
from arpo_jax.tools.check import check_dispatcher
from arpo_jax.training.distributed import (allgather_max, global_batch, is_copied, local_copy, local_mesh,
                                           process_rows, rows_held)
from arpo_jax.training.loop import TrainTask
from arpo_jax.training.metrics_log import RolloutDumpWriter
from arpo_jax.algorithms.packing import row_bucket
from arpo_jax.training.rl_batch import (PackLayout, StepRollout, TrajectoryBatch, advantages, gather_rollout,
                                        minibatch_groups, pack_layout, packed_arrays, packed_rows_needed,
                                        policy_arrays, reward_metrics, score_trajectories)
from arpo_jax.training.rl_config import RLConfig
from arpo_jax.data.rl_data import PromptLoader, encode_examples, read_prompts
from arpo_jax.training.state import TrainState
from arpo_jax.training.update import PolicyUpdater, cached_optimizer, make_packed_policy_batch, make_policy_batch

SUMMARY_KEYS = ("reward/mean", "reward/accuracy", "rollout/tool_calls_per_traj", "rollout/branches_per_prompt",
                "update/loss", "val/accuracy")


def validation_rollout(rollout: RolloutConfig, num_slots: int) -> RolloutConfig:
    """The training rollout config for greedy validation: one trajectory per prompt, no branching,
    ``num_slots`` slots; budgets, capacity, chunking and determinism as in training."""
    return dataclasses.replace(rollout, policy="trajectory", total_rollouts=1, initial_rollouts=1, greedy=True,
                               stale_entropy_baseline=False, num_slots=num_slots)


class RLRunner(TrainTask):
    """RL's part of the training loop (``training.loop``): prompts, tools, rollout engine, the
    step (rollout → rewards → advantages → updates) and greedy validation; ``run()`` runs it."""

    config_key = "rl_config"

    def __init__(self, cfg: RLConfig):
        self.config, t = cfg, cfg.train
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_dir)
        self._read_prompts()
        self.total_steps = t.steps or t.epochs * self.loader.batches_per_epoch
        self._split_batches()
        opt = cfg.optimizer
        if opt.schedule in ("cosine", "wsd") and opt.total_steps <= 1:
            opt = dataclasses.replace(opt, total_steps=self.total_steps * t.mini_batches * t.ppo_epochs)
        self.optimizer = cached_optimizer(opt)
        self.mesh = make_mesh(cfg.model.mesh)
        self.rollout_mesh = local_mesh(self.mesh)  # each process samples alone, on its own devices
        self.row_sharding = rows_sharding(self.mesh, 2, self.rows)
        n = jax.process_count()
        if n > 1 and rows_held(self.row_sharding, self.rows) != self.local_rows:
            raise ValueError(f"model.mesh {list(cfg.model.mesh)}: the {self.rows} rows of a mini-batch must split "
                             f"over the {n} processes along the data × fsdp axes")
        self.dumps = RolloutDumpWriter(t.out_dir, active=None if t.dump_rollouts else False)
        self.dispatcher = build_dispatcher(cfg.tools)
        try:
            self.sandbox = check_dispatcher(self.dispatcher)  # refuses a sandbox that does not hold
        except BaseException:
            self.dispatcher.close()
            raise

    def _read_prompts(self) -> None:
        d, t = self.config.data, self.config.train
        if not d.train_files:
            raise ValueError("data.train_files is empty: give at least one prompt file")
        self.examples = read_prompts(d.train_files, byte_exact=d.byte_exact_system_prompt, lenient=d.lenient,
                                     drop_overlap_with=d.drop_overlap_with, system_prompt=d.system_prompt)
        self.prompts = encode_examples(self.tokenizer, self.examples, d.template_kwargs)
        self.loader = PromptLoader(len(self.examples), d.prompts_per_step, seed=t.seed, shuffle=d.shuffle)
        self.val_examples = read_prompts(d.val_files, lenient=d.lenient, system_prompt=d.system_prompt,
                                         byte_exact=d.byte_exact_system_prompt) if d.val_files and (
            t.val_every or t.val_before_train) else []
        if d.val_prompts:
            self.val_examples = self.val_examples[: d.val_prompts]

    def _split_batches(self) -> None:
        """This process's prompts of a step, the rows of a mini-batch and its micro-batches."""
        cfg, t = self.config, self.config.train
        p, m, n = cfg.data.prompts_per_step, cfg.rollout.total_rollouts, jax.process_count()
        self.share = process_rows(p, "data.prompts_per_step")  # this process's prompts of every step
        if p // n % t.mini_batches:
            per = f" / the {n} JAX processes" if n > 1 else ""
            raise ValueError(f"data.prompts_per_step ({p}){per} must be a multiple of train.mini_batches "
                             f"({t.mini_batches})")
        self.rows = p // t.mini_batches * m  # trajectories per mini-batch (ARPO always ends with M per prompt)
        self.local_rows = self.rows // n  # the rows each process feeds
        micro = t.micro_batch_size or self.rows
        if self.rows % micro:
            raise ValueError(f"train.micro_batch_size ({micro}) must divide the {self.rows} trajectories of a "
                             f"mini-batch")
        self.num_micro = self.rows // micro
        if cfg.rollout.num_slots % n:
            raise ValueError(f"rollout.num_slots ({cfg.rollout.num_slots}) must split evenly over the {n} JAX "
                             f"processes (each samples with its share)")

    # ------------------------------------------------------------------ state
    def start(self, state: TrainState) -> None:
        """The frozen reference (KL), the update and the rollout engine, for ``state``'s model."""
        cfg = self.config
        self.ref_params = None
        if cfg.loss.kl_coef:  # frozen reference = the starting policy (reloaded on resume)
            ref = build_model(cfg.model, len(self.tokenizer), self.mesh)[0]
            self.ref_params = jax.tree.map(jnp.copy, nnx.split(ref)[1])
        vocab_size = min(len(self.tokenizer), state.mcfg.vocab_size)
        num_micro = self.num_micro
        if cfg.train.packing:  # micro-batches hold whole trees: no more of them than this process has trees
            num_micro = min(num_micro, max((self.share.stop - self.share.start) // cfg.train.mini_batches, 1))
        self.updater = PolicyUpdater(state.graphdef, self.optimizer, cfg.loss, cfg.rollout.temperature,
                                     num_micro, vocab_size, cfg.train.logits_chunk)
        model = nnx.merge(state.graphdef, local_copy(state.params, self.rollout_mesh, state.mcfg.jnp_dtype))
        rcfg = dataclasses.replace(cfg.rollout, num_slots=cfg.rollout.num_slots // jax.process_count())
        self.engine = RolloutEngine(model, self.tokenizer, self.dispatcher, rcfg, protocol=cfg.tools.protocol,
                                    mesh=self.rollout_mesh, num_prompts=self.share.stop - self.share.start,
                                    seed=cfg.train.seed)
        self.rollout_copy = is_copied(state.params, state.mcfg.jnp_dtype)
        self._drop_rollout_copy(self.engine)
        self.val_engine = None
        self.pack_shapes: set[tuple[int, int]] = set()  # packed (row length, rows) compiled so far

    def _drop_rollout_copy(self, engine: RolloutEngine) -> None:
        """Frees the rollout's copy of the policy (``local_copy``: this process's copy with
        several processes, the compute-dtype copy of fp32 master weights) once a rollout is
        done, so that it does not sit in device memory through the update (a rollout that
        shares the trainer's arrays has nothing to free)."""
        if self.rollout_copy:
            engine.update_params(None)

    def start_lines(self, resumed: bool) -> list[str]:
        cfg, n = self.config, jax.process_count()
        hosts = f" ({n} processes × {cfg.data.prompts_per_step // n})" if n > 1 else ""
        intro = (f"RL ({cfg.rollout.policy}, advantage {cfg.algorithm.advantage}): {len(self.examples)} prompts, "
                 f"{cfg.data.prompts_per_step} per step{hosts} × M={cfg.rollout.total_rollouts}, {self.total_steps} "
                 f"steps; tools: {', '.join(self.dispatcher.describe())}")
        return ([] if resumed else [intro]) + [self.sandbox["line"]]

    # ------------------------------------------------------------------- steps
    def _global(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a mini-batch → global arrays with rows over (data, fsdp)."""
        n = jax.process_count()
        put = jax.device_put if n == 1 else global_batch
        return {k: put(v, rows_sharding(self.mesh, 2, len(v) * n)) for k, v in arrays.items()}

    def _padded_arrays(self, parts: list[TrajectoryBatch], tok_adv, weights, groups) -> list[dict]:
        """One padded row per trajectory: ``local_rows`` rows at the length bucket of the
        mini-batch's longest sequence on any process (or ``train.pad_len``)."""
        cfg, t = self.config, self.config.train
        longest = allgather_max([int(p.seq_lengths.max(initial=1)) for p in parts])
        cap = max(cfg.rollout.max_prompt_tokens + cfg.rollout.max_response_tokens, int(longest.max()), 64)
        return [policy_arrays(p, tok_adv[g], weights[g], self.tokenizer.pad_token_id, rows=self.local_rows,
                              length=max(t.pad_len, int(n)) if t.pad_len else bucket(int(n), 64, cap))
                for p, g, n in zip(parts, groups, longest)]

    def _packed_arrays(self, parts: list[TrajectoryBatch], tok_adv, weights, groups) -> list[dict]:
        """Tree-packed rows: every process packs its own trees; the row length, sequence length,
        trajectory slots and packed row count are the maxima over processes (two collectives), the
        row count a multiple that splits the mini-batch's rows evenly over the batch axes' devices."""
        k = self.updater.num_micro
        d = int(np.prod([self.mesh.shape.get(a, 1) for a in BATCH]))  # devices the rows split over
        mult = d // math.gcd(d, k * jax.process_count())  # packed rows per micro-batch: a multiple of it
        lays = [pack_layout(p, k, row_multiple=mult, reuse=self.pack_shapes) for p in parts]
        agreed = allgather_max([[x.row_len, x.seq_len, max(x.traj_rows, self.local_rows // k)]
                                for x in lays])
        rows = allgather_max([packed_rows_needed(p, x.micro, int(a[0])) for p, x, a in zip(parts, lays, agreed)])
        out = []
        for p, g, x, a, r in zip(parts, groups, lays, agreed, rows):
            lay = PackLayout(x.micro, int(a[0]), row_bucket(int(r), mult), int(a[1]), int(a[2]))
            self.pack_shapes.add((lay.row_len, lay.rows))  # compiled: reused within PACK_SLACK (4 %) of the tokens
            out.append(packed_arrays(p, tok_adv[g], weights[g], lay, self.tokenizer.pad_token_id,
                                     row_base=jax.process_index() * lay.rows))
        return out

    def policy_batches(self, params, batch: TrajectoryBatch, tok_adv, weights) -> tuple[list, list[jax.Array]]:
        """The step's mini-batches (``PolicyBatch`` or ``PackedPolicyBatch`` of global arrays, built
        once for all PPO epochs), and the sampler–trainer log-prob gaps.

        Mini-batches by prompt (verl's ppo_mini_batch), strided over the step's prompt list
        (``minibatch_groups``), as tree-packed rows (``train.packing``) or one padded row per
        trajectory, at shapes all processes agree on (power-of-two lengths; ``choose_rows`` for packed rows),
        so the compiles are the same everywhere and few. Old-log-prob recompute and reference
        scoring run on the same rows.
        """
        cfg, t = self.config, self.config.train
        groups = minibatch_groups(batch.forest.group, t.mini_batches, self.share.start)
        for g in groups:
            if len(g) > self.local_rows:
                raise RuntimeError(f"{len(g)} trajectories for the {self.local_rows} rows of a mini-batch")
        parts = [batch.select(g) for g in groups]
        build = self._packed_arrays if t.packing else self._padded_arrays
        batches, gaps = [], []
        for arrays in build(parts, tok_adv, weights, groups):
            b = self._global(arrays)
            if t.old_logprobs == "recompute" or cfg.loss.kl_coef:
                recomputed = self._score(params, b)[0] * b["loss_mask"]
                gaps.append(jnp.abs(recomputed - b["old_logprobs"]).sum() / jnp.maximum(b["loss_mask"].sum(), 1.0))
                if t.old_logprobs == "recompute":
                    b["old_logprobs"] = recomputed
            if cfg.loss.kl_coef:
                b["ref_logprobs"] = self._score(self.ref_params, b)[0]
            batches.append(make_packed_policy_batch(**b) if t.packing else make_policy_batch(**b))
        return batches, gaps

    def _score(self, params, b: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(log-probs, entropies) [B, T] of a mini-batch's trajectories under ``params``."""
        if self.config.train.packing:
            return self.updater.score_packed(params, make_packed_policy_batch(**b))
        return self.updater.score(params, b["tokens"], b["attention_mask"])

    def step(self, state: TrainState, loss_scale: jax.Array, updates_done: int) -> dict[str, Any]:
        """Rollout of this process's prompts, rewards, advantages and the updates of one step →
        metrics over all processes (process 0 also dumps the step's trajectories)."""
        cfg = self.config
        t0 = time.perf_counter()
        batch_idx = self.loader.next_batch()  # the whole step's prompts (the same on every process)
        local_idx = batch_idx[self.share]
        epoch = self.loader.epoch_float()
        result = self._rollout(state, [self.prompts[i] for i in local_idx])
        t_rollout = time.perf_counter() - t0
        batch = TrajectoryBatch.from_trajectories(result.trajectories)  # the step's one conversion
        rewards = score_trajectories(result.trajectories, [self.examples[i] for i in local_idx], cfg.reward)
        seq_adv, tok_adv, weights = advantages(batch, np.asarray([r.score for r in rewards], np.float32),
                                               cfg.algorithm)
        t_reward = time.perf_counter() - t0 - t_rollout
        batches, gaps = self.policy_batches(state.params, batch, tok_adv, weights)
        gathered = gather_rollout(result, rewards, seq_adv, self.share.start, cfg.data.prompts_per_step)
        metrics: dict[str, Any] = dict(gathered.stats)
        metrics.update(reward_metrics(gathered.rewards, gathered.trajectories))
        metrics["epoch"] = epoch
        t1 = time.perf_counter()
        metrics.update(self._update(state, batches, gaps, loss_scale))
        metrics.update({"time/rollout_s": t_rollout, "time/reward_s": t_reward,
                        "time/update_s": time.perf_counter() - t1, "time/step_s": time.perf_counter() - t0})
        self._dump(state.step + 1, batch_idx, gathered)
        return metrics

    def _rollout(self, state: TrainState, prompts: list[list[int]]):
        """This process's prompts rolled out with the current policy (seeded by (seed, step))."""
        self.engine.update_params(local_copy(state.params, self.rollout_mesh, state.mcfg.jnp_dtype))
        result = self.engine.run(prompts, seed=self.config.train.seed * 1_000_003 + state.step,
                                 prompt_offset=self.share.start)
        self.rollout_copy = is_copied(state.params, state.mcfg.jnp_dtype)
        self._drop_rollout_copy(self.engine)
        return result

    def _update(self, state: TrainState, batches: list, gaps: list[jax.Array], loss_scale) -> dict[str, Any]:
        """``train.ppo_epochs`` passes of updates over the mini-batches, back to back; their
        metrics (and the log-prob gaps) are fetched once, after the last."""
        upd = []
        for _ in range(self.config.train.ppo_epochs):
            for batch in batches:
                state.params, state.opt_state, m = self.updater.apply(state.params, state.opt_state, batch, loss_scale)
                upd.append(m)
        upd, gaps = jax.device_get((upd, gaps))
        out = {f"update/{k}": float(np.mean([u[k] for u in upd])) for k in upd[0]}
        out["update/approx_kl_first"] = float(upd[0]["approx_kl"])  # the sampler–trainer gap at the start
        out["skipped"] = int(any(int(u["skipped"]) for u in upd))
        if gaps:
            out["logprob_gap/sampler_vs_trainer"] = float(np.mean(gaps))
        return out

    def _dump(self, step: int, batch_idx, gathered: StepRollout) -> None:
        """Process 0: the step's trajectories with their rewards and advantages (``rollouts/``)."""
        if not self.dumps.active:
            return
        examples = [self.examples[i] for i in batch_idx]
        self.dumps.write(step, [
            trajectory_record(tr, step=step, reward=float(np.float32(r.score)), advantage=float(a),
                              prompt_text=examples[tr.prompt_index].question,
                              extra={"reward_reason": r.reason, "example_id": examples[tr.prompt_index].id})
            for tr, r, a in zip(gathered.trajectories, gathered.rewards, gathered.advantages)])

    # -------------------------------------------------------------- validation
    def validation_due(self, step: int) -> bool:
        t = self.config.train
        due = t.val_before_train if step == 0 else bool(t.val_every) and step % t.val_every == 0
        return due and bool(self.val_examples)

    def validate(self, state: TrainState) -> dict[str, float]:
        """Greedy rollouts (no branching) on the validation prompts: reward and accuracy. Each
        process rolls out a contiguous share of them; the metrics are over all."""
        n, i, num = jax.process_count(), jax.process_index(), len(self.val_examples)
        share = slice(i * num // n, (i + 1) * num // n)
        params = local_copy(state.params, self.rollout_mesh, state.mcfg.jnp_dtype)
        if self.val_engine is None:
            vcfg = validation_rollout(self.config.rollout, max(min(share.stop - share.start, 64), 1))
            self.val_engine = RolloutEngine(nnx.merge(state.graphdef, params), self.tokenizer, self.dispatcher, vcfg,
                                            protocol=self.config.tools.protocol, mesh=self.rollout_mesh,
                                            seed=self.config.train.seed)
            self.val_prompts = encode_examples(self.tokenizer, self.val_examples, self.config.data.template_kwargs)
        self.val_engine.update_params(params)
        res = self.val_engine.run(self.val_prompts[share], seed=0, prompt_offset=share.start)
        del params
        self._drop_rollout_copy(self.val_engine)
        rewards = score_trajectories(res.trajectories, self.val_examples[share], self.config.reward)
        gathered = gather_rollout(res, rewards, np.zeros(len(rewards), np.float32), share.start, num)
        m = reward_metrics(gathered.rewards, gathered.trajectories)
        out = {f"val/{k.split('/', 1)[1]}": v for k, v in m.items()}
        out["val/tool_calls_per_traj"] = gathered.stats["rollout/tool_calls_per_traj"]
        out["val/response_length"] = gathered.stats["rollout/response_length"]
        return out

    # --------------------------------------------------------------------- end
    def export_sample(self) -> str:
        return self.tokenizer.decode(self.prompts[0])

    def summary(self, last: dict[str, Any]) -> dict[str, Any]:
        return {k: last.get(k) for k in SUMMARY_KEYS if k in last}

    def close(self) -> None:
        self.dispatcher.close()


def run_train(cfg: RLConfig) -> dict[str, Any]:
    """Runs (or resumes) RL training; returns a summary dict (status, step, last metrics).

    Raises ``TrainingDiverged`` (after writing a checkpoint) when too many consecutive
    updates are non-finite."""
    return RLRunner(cfg).run()
