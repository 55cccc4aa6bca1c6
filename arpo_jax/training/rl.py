"""The RL loop of ``arpo-jax train``: data → rollout → reward → advantage → update.

Each step takes ``data.prompts_per_step`` prompts, rolls them out with the configured policy
(GRPO trajectories or ARPO branching, real tools), scores them, computes advantages over each
prompt's tree and applies ``train.mini_batches × train.ppo_epochs`` jitted, sharded AdamW
updates (exact micro-batch accumulation). Checkpoints carry parameters, optimizer state, RNG,
data position and skip counters, so ``train.resume=auto`` after a kill repeats the
uninterrupted run's steps exactly (rollout randomness is a function of (seed, step)).

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
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from arpo_jax.config import to_dict
from arpo_jax.models import make_mesh, save_hf
from arpo_jax.models.config import ModelConfig
from arpo_jax.models.sharding import rows_sharding
from arpo_jax.rollout import RolloutConfig, RolloutEngine, trajectory_record
from arpo_jax.sampling.config import bucket
from arpo_jax.tools import ToolDispatcher
from arpo_jax.tools.check import check_dispatcher
from arpo_jax.training.checkpoint import Checkpointer, resolve_resume
from arpo_jax.training.distributed import (allgather_max, global_batch, is_main_process, local_copy, local_mesh,
                                           process_rows, rows_held)
from arpo_jax.training.metrics_log import MetricsLogger, RolloutDumpWriter, to_python
from arpo_jax.training.rl_batch import (advantages, gather_rollout, minibatch_groups, policy_arrays, reward_metrics,
                                        score_trajectories)
from arpo_jax.training.rl_config import RLConfig, ToolsConfig
from arpo_jax.training.rl_data import PromptLoader, encode_examples, read_prompts
from arpo_jax.training.sft import _write_status, abstract_train_state, build_model, load_tokenizer
from arpo_jax.training.signals import PreemptionHandler, SkipGuard, TrainingDiverged
from arpo_jax.training.update import cached_optimizer, make_policy_batch, score_tokens, update


def make_dispatcher(tools: ToolsConfig) -> ToolDispatcher:
    """The tools the protocol names: Python always builds; search when it has a backend."""
    names = set(tools.protocol.tools)
    s = tools.search
    search_ok = s.backend == "http" or bool(s.cache_path or s.corpus_path)
    if "search" in names and not search_ok:
        print("note: no search backend configured (tools.search.cache_path / corpus_path / backend=http); "
              "search calls will be answered as unavailable", flush=True)
    return ToolDispatcher.from_configs(python=tools.python if "python" in names else None,
                                       search=s if "search" in names and search_ok else None,
                                       config=tools.dispatcher, protocol=tools.protocol)


class RLRunner:
    """Holds the pieces of one training run; ``run()`` executes it (see ``run_train``)."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        t = cfg.train
        self.out_dir = Path(t.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = load_tokenizer(cfg)
        d = cfg.data
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
        self.total_steps = t.steps or t.epochs * self.loader.batches_per_epoch
        p, m, n = d.prompts_per_step, cfg.rollout.total_rollouts, jax.process_count()
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
        opt = cfg.optimizer
        if opt.schedule in ("cosine", "wsd") and opt.total_steps <= 1:
            opt = dataclasses.replace(opt, total_steps=self.total_steps * t.mini_batches * t.ppo_epochs)
        self.optimizer = cached_optimizer(opt)
        self.mesh = make_mesh(cfg.model.mesh)
        self.rollout_mesh = local_mesh(self.mesh)  # each process samples alone, on its own devices
        self.row_sharding = rows_sharding(self.mesh, 2, self.rows)
        if n > 1 and rows_held(self.row_sharding, self.rows) != self.local_rows:
            raise ValueError(f"model.mesh {list(cfg.model.mesh)}: the {self.rows} rows of a mini-batch must split "
                             f"over the {n} processes along the data × fsdp axes")
        self.ckpt = Checkpointer(t.checkpoint_dir or self.out_dir / "checkpoints", keep=t.keep,
                                 async_save=t.async_checkpoint)
        self.guard = SkipGuard(t.max_consecutive_skips)
        self.dispatcher = make_dispatcher(cfg.tools)
        self.sandbox = check_dispatcher(self.dispatcher)
        self.dumps = RolloutDumpWriter(self.out_dir, active=None if t.dump_rollouts else False)

    # ------------------------------------------------------------------ state
    def init_or_restore(self) -> None:
        cfg = self.cfg
        resume = resolve_resume(cfg.train.resume, self.ckpt)
        self.step = 0
        if resume is None:
            model, self.mcfg = build_model(cfg, self.tokenizer, self.mesh)
            self.graphdef, self.params = nnx.split(model)
            from arpo_jax.models.sharding import state_shardings

            opt_state = self.optimizer.init(self.params)
            self.opt_state = jax.device_put(opt_state, state_shardings(opt_state, self.mesh))
        else:
            holder = {}

            def target(meta):
                holder["mcfg"] = ModelConfig(**meta["model_config"])
                holder["graphdef"], abstract = abstract_train_state(holder["mcfg"], self.optimizer, self.mesh)
                return abstract

            restored = self.ckpt.restore(target, step=None if resume == -1 else resume)
            self.loader.set_position(restored.meta["data_position"])
            self.guard.load_state_dict(restored.meta.get("skips", {}))
            self.mcfg, self.graphdef = holder["mcfg"], holder["graphdef"]
            self.params, self.opt_state = restored.state["params"], restored.state["opt_state"]
            self.step = restored.step
        self.ref_params = None
        if cfg.loss.kl_coef:  # frozen reference = the starting policy (reloaded on resume)
            self.ref_params = jax.tree.map(jnp.copy, nnx.split(build_model(cfg, self.tokenizer, self.mesh)[0])[1])
        self.vocab_size = min(len(self.tokenizer), self.mcfg.vocab_size)
        model = nnx.merge(self.graphdef, local_copy(self.params, self.rollout_mesh, self.mcfg.jnp_dtype))
        rcfg = dataclasses.replace(cfg.rollout, num_slots=cfg.rollout.num_slots // jax.process_count())
        self.engine = RolloutEngine(model, self.tokenizer, self.dispatcher, rcfg, protocol=cfg.tools.protocol,
                                    mesh=self.rollout_mesh, num_prompts=self.share.stop - self.share.start,
                                    seed=cfg.train.seed)
        self._drop_rollout_copy(self.engine)
        self.val_engine = None

    @staticmethod
    def _drop_rollout_copy(engine: RolloutEngine) -> None:
        """Multi-host: frees this process's copy of the policy (``local_copy``) once a rollout
        is done, so that it does not sit in device memory through the update (one process
        shares the trainer's arrays: nothing to free)."""
        if jax.process_count() > 1:
            engine.update_params(None)

    def save(self, wait: bool = False) -> None:
        meta = {"data_position": self.loader.position.to_dict(), "skips": self.guard.state_dict(),
                "model_config": dataclasses.asdict(self.mcfg), "rl_config": to_dict(self.cfg)}
        key = np.asarray(jax.random.key_data(jax.random.key(self.cfg.train.seed)))  # rollouts derive from (seed, step)
        rng = jax.make_array_from_callback(key.shape, NamedSharding(self.mesh, P()), lambda i: key[i])
        self.ckpt.save(self.step, {"params": self.params, "opt_state": self.opt_state, "rng": rng}, meta, wait=wait)

    def export(self, name: str) -> str | None:
        """Writes the policy as a HF checkpoint (every process calls it; process 0 writes)."""
        path = save_hf(nnx.merge(self.graphdef, self.params), self.mcfg,
                       Path(self.cfg.train.export_dir or self.out_dir / "hf") / name, tokenizer=self.tokenizer,
                       dtype=self.cfg.train.export_dtype)
        return str(path) if is_main_process() else None

    # ------------------------------------------------------------------- steps
    def _score(self, params, batch: dict) -> jax.Array:
        """Log-probs [B, T] of a (global) batch under ``params``, one micro-batch at a time."""
        return score_tokens(params, batch["tokens"], batch["attention_mask"], graphdef=self.graphdef,
                            vocab_size=self.vocab_size, temperature=self.cfg.rollout.temperature,
                            logits_chunk=self.cfg.train.logits_chunk, num_micro=self.num_micro)[0]

    def _global(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a mini-batch → global arrays with rows over (data, fsdp)."""
        if jax.process_count() == 1:
            return {k: jax.device_put(v, self.row_sharding) for k, v in arrays.items()}
        return global_batch(arrays, self.row_sharding)

    def policy_batches(self, trajs, tok_adv, weights) -> tuple[list[dict], list[jax.Array]]:
        """The step's mini-batches as global arrays, and the sampler–trainer log-prob gaps.

        Mini-batches by prompt (verl's ppo_mini_batch), strided over the step's prompt list
        (``minibatch_groups``): every process feeds ``local_rows`` rows of each (empty rows pad
        it) at the length bucket of the mini-batch's longest sequence on any process, so the
        shapes, and the compiles, are the same everywhere. Lengths are power-of-two buckets up
        to the longest a trajectory can be, so the update compiles once per bucket.
        """
        cfg, t = self.cfg, self.cfg.train
        groups = minibatch_groups(trajs, t.mini_batches, self.share.start)
        longest = allgather_max([max((len(trajs[j].prompt_tokens) + len(trajs[j].tokens) for j in g), default=1)
                                 for g in groups])
        cap = max(cfg.rollout.max_prompt_tokens + cfg.rollout.max_response_tokens, int(longest.max()), 64)
        batches, gaps = [], []
        for g, n in zip(groups, longest):
            if len(g) > self.local_rows:
                raise RuntimeError(f"{len(g)} trajectories for the {self.local_rows} rows of a mini-batch")
            arrays = policy_arrays([trajs[j] for j in g], tok_adv[g], weights[g], self.tokenizer.pad_token_id,
                                   rows=self.local_rows,
                                   length=max(t.pad_len, int(n)) if t.pad_len else bucket(int(n), 64, cap))
            b = self._global(arrays)
            if t.old_logprobs == "recompute" or cfg.loss.kl_coef:
                recomputed = self._score(self.params, b) * b["loss_mask"]
                gaps.append(jnp.abs(recomputed - b["old_logprobs"]).sum() / jnp.maximum(b["loss_mask"].sum(), 1.0))
                if t.old_logprobs == "recompute":
                    b["old_logprobs"] = recomputed
            if cfg.loss.kl_coef:
                b["ref_logprobs"] = self._score(self.ref_params, b)
            batches.append(b)
        return batches, gaps

    def rl_step(self) -> tuple[dict[str, Any], list[dict]]:
        """Rollout of this process's prompts, rewards, advantages and the updates of one step →
        (metrics over all processes, dump records: process 0 only)."""
        cfg, t = self.cfg, self.cfg.train
        t0 = time.perf_counter()
        batch_idx = self.loader.next_batch()  # the whole step's prompts (the same on every process)
        local_idx = batch_idx[self.share]
        epoch = self.loader.epoch_float()
        self.engine.update_params(local_copy(self.params, self.rollout_mesh, self.mcfg.jnp_dtype))
        result = self.engine.run([self.prompts[i] for i in local_idx], seed=t.seed * 1_000_003 + self.step,
                                 prompt_offset=self.share.start)
        self._drop_rollout_copy(self.engine)
        trajs = result.trajectories
        t_rollout = time.perf_counter() - t0
        rewards = score_trajectories(trajs, [self.examples[i] for i in local_idx], cfg.reward)
        scores = np.asarray([r.score for r in rewards], np.float32)
        seq_adv, tok_adv, weights = advantages(trajs, scores, cfg.algorithm)
        t_reward = time.perf_counter() - t0 - t_rollout
        batches, gaps = self.policy_batches(trajs, tok_adv, weights)
        step = gather_rollout(result, rewards, seq_adv, self.share.start, cfg.data.prompts_per_step)
        metrics: dict[str, Any] = dict(step.stats)
        metrics.update(reward_metrics(step.rewards, step.trajectories))
        metrics["epoch"] = epoch

        t1 = time.perf_counter()
        nan = t.debug_nan_step and t.debug_nan_step <= self.step + 1 < t.debug_nan_step + t.debug_nan_count
        scale = jnp.float32(np.nan if nan else 1.0)
        upd: list[dict] = []
        for _ in range(t.ppo_epochs):
            for b in batches:
                self.params, self.opt_state, m = update(
                    self.params, self.opt_state, make_policy_batch(**b), scale, graphdef=self.graphdef,
                    optimizer=self.optimizer, loss_cfg=cfg.loss, temperature=cfg.rollout.temperature,
                    num_micro=self.num_micro, vocab_size=self.vocab_size, logits_chunk=t.logits_chunk)
                upd.append(jax.device_get(m))
        t_update = time.perf_counter() - t1
        for k in upd[0]:
            metrics[f"update/{k}"] = float(np.mean([u[k] for u in upd]))
        metrics["update/approx_kl_first"] = float(upd[0]["approx_kl"])  # the sampler–trainer gap at the start
        skipped = any(int(u["skipped"]) for u in upd)
        metrics["skipped"] = int(skipped)
        if gaps:
            metrics["logprob_gap/sampler_vs_trainer"] = float(np.mean(jax.device_get(gaps)))
        metrics.update({"time/rollout_s": t_rollout, "time/reward_s": t_reward, "time/update_s": t_update,
                        "time/step_s": time.perf_counter() - t0})
        if not is_main_process():
            return metrics, []
        examples = [self.examples[i] for i in batch_idx]
        records = [trajectory_record(tr, step=self.step + 1, reward=float(np.float32(r.score)), advantage=float(a),
                                     prompt_text=examples[tr.prompt_index].question,
                                     extra={"reward_reason": r.reason, "example_id": examples[tr.prompt_index].id})
                   for tr, r, a in zip(step.trajectories, step.rewards, step.advantages)]
        return metrics, records

    def validate(self) -> dict[str, float]:
        """Greedy rollouts (no branching) on the validation prompts: reward and accuracy. Each
        process rolls out a contiguous share of them; the metrics are over all."""
        if not self.val_examples:
            return {}
        r, n, i = self.cfg.rollout, jax.process_count(), jax.process_index()
        num = len(self.val_examples)
        share = slice(i * num // n, (i + 1) * num // n)
        params = local_copy(self.params, self.rollout_mesh, self.mcfg.jnp_dtype)
        if self.val_engine is None:
            vcfg = RolloutConfig(policy="trajectory", total_rollouts=1, greedy=True,
                                 max_response_tokens=r.max_response_tokens, max_prompt_tokens=r.max_prompt_tokens,
                                 max_tool_calls=r.max_tool_calls, tool_limit_action=r.tool_limit_action,
                                 chunk_size=r.chunk_size, num_slots=max(min(share.stop - share.start, 64), 1))
            self.val_engine = RolloutEngine(nnx.merge(self.graphdef, params), self.tokenizer, self.dispatcher, vcfg,
                                            protocol=self.cfg.tools.protocol, mesh=self.rollout_mesh,
                                            seed=self.cfg.train.seed)
            self.val_prompts = encode_examples(self.tokenizer, self.val_examples, self.cfg.data.template_kwargs)
        self.val_engine.update_params(params)
        res = self.val_engine.run(self.val_prompts[share], seed=0, prompt_offset=share.start)
        del params
        self._drop_rollout_copy(self.val_engine)
        rewards = score_trajectories(res.trajectories, self.val_examples[share], self.cfg.reward)
        step = gather_rollout(res, rewards, np.zeros(len(rewards), np.float32), share.start, num)
        m = reward_metrics(step.rewards, step.trajectories)
        out = {f"val/{k.split('/', 1)[1]}": v for k, v in m.items()}
        out["val/tool_calls_per_traj"] = step.stats["rollout/tool_calls_per_traj"]
        out["val/response_length"] = step.stats["rollout/response_length"]
        return out

    # -------------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        self.init_or_restore()
        log = MetricsLogger(self.out_dir, total_steps=self.total_steps, start_step=self.step, jsonl=cfg.logging.jsonl,
                            tensorboard=cfg.logging.tensorboard, progress=cfg.logging.progress,
                            wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project,
                            run_name=cfg.logging.run_name, config=to_dict(cfg))
        if self.step:
            log.message(f"resumed from step {self.step} of {self.ckpt.directory} (data epoch "
                        f"{self.loader.position.epoch}, batch {self.loader.position.index})")
        else:
            n = jax.process_count()
            hosts = f" ({n} processes × {cfg.data.prompts_per_step // n})" if n > 1 else ""
            log.message(f"RL ({cfg.rollout.policy}, advantage {cfg.algorithm.advantage}): {len(self.examples)} "
                        f"prompts, {cfg.data.prompts_per_step} per step{hosts} × M={cfg.rollout.total_rollouts}, "
                        f"{self.total_steps} steps; tools: {', '.join(self.dispatcher.describe())}")
        log.message(self.sandbox["line"])
        exported: list[str] = []
        status, last = "finished", {}
        try:
            with PreemptionHandler() as preempt:
                if t.val_before_train and self.step == 0 and self.val_examples:
                    log.log(0, self.validate())
                while self.step < self.total_steps:
                    metrics, records = self.rl_step()
                    self.step += 1
                    self.guard.update(bool(metrics["skipped"]))
                    metrics["skipped_total"] = self.guard.total
                    metrics["tools/python_sandbox_rlimit"] = float(self.sandbox["mode"] == "rlimit")
                    if t.val_every and self.step % t.val_every == 0:
                        metrics.update(self.validate())
                    self.dumps.write(self.step, records)
                    last = metrics
                    log.log(self.step, metrics)
                    if metrics["skipped"]:
                        log.message(f"step {self.step}: non-finite loss or gradient, update skipped "
                                    f"({self.guard.consecutive} in a row, {self.guard.total} in all)")
                    if self.guard.tripped:
                        self.save(wait=True)
                        msg = self.guard.message(self.step, self.ckpt.directory)
                        log.message(msg)
                        _write_status(self.out_dir, {"status": "diverged", "step": self.step, "message": msg,
                                                     "python_sandbox": self.sandbox["mode"]})
                        raise TrainingDiverged(msg)
                    if t.save_every and self.step % t.save_every == 0:
                        self.save()
                    if t.export_every and self.step % t.export_every == 0:
                        exported.append(self.export(f"step_{self.step}"))
                    if t.debug_step_sleep:
                        time.sleep(t.debug_step_sleep)
                    if preempt.requested and self.step < self.total_steps:
                        log.message(f"{preempt.signal_name} received: writing a final checkpoint at step {self.step} "
                                    f"and stopping (resume with train.resume=auto)")
                        status = "preempted"
                        break
            self.save(wait=True)
            if status == "finished" and t.export_at_end:
                exported.append(self.export("final"))
                log.message(f"exported HF checkpoint to {exported[-1]}")
        finally:
            log.close()
            self.ckpt.close()
            self.dispatcher.close()
        keys = ("reward/mean", "reward/accuracy", "rollout/tool_calls_per_traj", "rollout/branches_per_prompt",
                "update/loss", "val/accuracy")
        summary = to_python({"status": status, "step": self.step, "total_steps": self.total_steps,
                             "skipped_total": self.guard.total, "checkpoint_dir": self.ckpt.directory,
                             "python_sandbox": self.sandbox["mode"],
                             "exported": [e for e in exported if e], **{k: last.get(k) for k in keys if k in last}})
        _write_status(self.out_dir, summary)
        return summary


def run_train(cfg: RLConfig) -> dict[str, Any]:
    """Runs (or resumes) RL training; returns a summary dict (status, step, last metrics).

    Raises ``TrainingDiverged`` (after writing a checkpoint) when too many consecutive
    updates are non-finite."""
    return RLRunner(cfg).run()
