"""The one training loop of ``arpo-jax sft`` and ``arpo-jax train``.

``TrainingLoop(task).run()`` owns everything a run does besides its updates:

* the state: a fresh model (``models.build_model``) and optimizer state, or the checkpoint
  ``train.resume`` asks for (``restore_train_state``), moving the task's data loader and the
  skip counters to its position;
* checkpoints (params, optimizer state, RNG, data position, skip counters, model and run
  configs) every ``train.save_every`` steps and at the end, HF exports every
  ``train.export_every`` steps and at the end (``train.export_at_end``);
* safety: a NaN-scaled loss at ``train.debug_nan_step`` (tests), non-finite updates counted
  (``SkipGuard``) and the run stopped with a checkpoint after ``train.max_consecutive_skips``
  in a row (``TrainingDiverged``), SIGTERM turned into a final checkpoint
  (``PreemptionHandler``);
* logging: a step's metrics every ``logging.every`` steps (and always on a skipped update, a
  validation and the last step), and ``status.json`` / the returned summary: status, step,
  total_steps, skipped_total, checkpoint_dir, python_sandbox (when the task has tools),
  exported, the final metrics the task names.

A ``TrainTask`` (``SFTRunner``, ``RLRunner``) provides the rest: its data loader, optimizer and
mesh, ``start`` (after the state exists), ``step`` (one step's updates and host metrics),
``validation_due`` / ``validate`` and its summary.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arpo_jax.config import to_dict
from arpo_jax.data.tokenizer import check_exported_tokenizer
from arpo_jax.models import build_model, save_hf
from arpo_jax.training.checkpoint import Checkpointer, resolve_resume
from arpo_jax.training.distributed import is_main_process
from arpo_jax.training.metrics_log import MetricsLogger, to_python
from arpo_jax.training.signals import PreemptionHandler, SkipGuard, TrainingDiverged
from arpo_jax.training.state import TrainState, init_train_state, restore_train_state


class TrainTask:
    """What SFT and RL give the loop. Attributes, set by the subclass's constructor:

    config: the run's config (``model``: ``ModelSourceConfig``, ``train``: ``TrainConfig``,
      ``logging``: ``LoggingConfig``); config_key: the checkpoint ``meta`` key it is saved under.
    tokenizer; loader: the data loader (``position.to_dict()``, ``position.epoch`` / ``index``,
      ``set_position(dict)``); optimizer (optax); mesh; total_steps.
    sandbox: ``check_dispatcher``'s {"mode", "line"} when the task runs tools, else None.
    """

    config: Any
    config_key: str
    tokenizer: Any
    loader: Any
    optimizer: Any
    mesh: Any
    total_steps: int
    sandbox: dict | None = None

    def start(self, state: TrainState) -> None:
        """Called once the state exists (fresh or restored), before the first step."""

    def start_lines(self, resumed: bool) -> list[str]:
        """Lines logged at the start (after the loop's "resumed from ..." line on a resume)."""
        return []

    def step(self, state: TrainState, loss_scale: jax.Array, updates_done: int) -> dict[str, Any]:
        """One step's updates: advances ``state.params`` / ``state.opt_state`` (not ``state.step``)
        and returns the step's metrics as host values (fetched once), with "skipped" (0 or 1).

        loss_scale: float32 [] multiplying the loss (NaN only to test the safety path).
        updates_done: optimizer updates applied before this step (steps less skipped ones).
        """
        raise NotImplementedError

    def validation_due(self, step: int) -> bool:
        """Whether ``validate`` runs after step ``step`` (0: before the first step)."""
        return False

    def validate(self, state: TrainState) -> dict[str, float]:
        """Validation metrics of the current state ({} when there is nothing to validate on)."""
        return {}

    def export_sample(self) -> str | None:
        """Text the exported tokenizer must tokenize as the training one does (None: no check)."""
        return None

    def summary(self, last: dict[str, Any]) -> dict[str, Any]:
        """The task's fields of the summary and ``status.json``, from the last step's metrics."""
        return {}

    def close(self) -> None:
        """Releases what the task holds (tools); called however the run ends."""

    def run(self) -> dict[str, Any]:
        """Runs (or resumes) the training; returns the summary (see ``TrainingLoop``)."""
        return TrainingLoop(self).run()


def write_status(out_dir: Path, status: dict) -> None:
    """``out_dir/status.json`` (process 0 only)."""
    if is_main_process():
        (out_dir / "status.json").write_text(json.dumps(status, indent=2))


class TrainingLoop:
    """Drives a ``TrainTask`` from its start (or checkpoint) to ``task.total_steps``."""

    def __init__(self, task: TrainTask):
        self.task, self.train, self.logging = task, task.config.train, task.config.logging
        self.out_dir = Path(self.train.out_dir)
        self.guard = SkipGuard(self.train.max_consecutive_skips)
        self.exported: list[str] = []
        self.ckpt: Checkpointer | None = None
        self.log: MetricsLogger | None = None
        self.state: TrainState | None = None

    def run(self) -> dict[str, Any]:
        """Runs to the end (or SIGTERM); returns the summary, also written to ``status.json``.

        Raises ``TrainingDiverged`` (after a checkpoint and a "diverged" status) when too many
        consecutive updates are non-finite.
        """
        t = self.train
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt = Checkpointer(t.checkpoint_dir or self.out_dir / "checkpoints", keep=t.keep,
                                     async_save=t.async_checkpoint)
            self.state = self._init_or_restore()
            self.task.start(self.state)
            self.log = self._logger()
            status, last = self._steps()
            self._save(wait=True)
            if status == "finished" and t.export_at_end:
                self._export("final")
        finally:
            if self.log is not None:
                self.log.close()
            if self.ckpt is not None:
                self.ckpt.close()
            self.task.close()
        summary = self._summary(status, last)
        write_status(self.out_dir, summary)
        return summary

    # ------------------------------------------------------------------ state
    def _init_or_restore(self) -> TrainState:
        task = self.task
        resume = resolve_resume(self.train.resume, self.ckpt)
        if resume is None:
            model, mcfg = build_model(task.config.model, len(task.tokenizer), task.mesh)
            return init_train_state(model, mcfg, task.optimizer, task.mesh, self.train.seed)
        state, meta = restore_train_state(self.ckpt, None if resume == -1 else resume, task.optimizer, task.mesh)
        task.loader.set_position(meta["data_position"])
        self.guard.load_state_dict(meta.get("skips", {}))
        return state

    def _save(self, wait: bool = False) -> None:
        st, task = self.state, self.task
        meta = {"data_position": task.loader.position.to_dict(), "skips": self.guard.state_dict(),
                "model_config": dataclasses.asdict(st.mcfg), task.config_key: to_dict(task.config)}
        self.ckpt.save(st.step, st.arrays(), meta, wait=wait)

    def _export(self, name: str) -> None:
        """The policy as a HF checkpoint (every process gathers; process 0 writes and logs)."""
        st, task = self.state, self.task
        path = save_hf(st.model(), st.mcfg, Path(self.train.export_dir or self.out_dir / "hf") / name,
                       tokenizer=task.tokenizer, dtype=self.train.export_dtype)
        if not is_main_process():
            return
        self.exported.append(str(path))
        self.log.message(f"exported HF checkpoint to {path}")
        sample = task.export_sample()
        warning = check_exported_tokenizer(task.tokenizer, path, sample) if sample is not None else None
        if warning:
            self.log.message(warning)

    # ------------------------------------------------------------------- steps
    def _logger(self) -> MetricsLogger:
        lg, task, step = self.logging, self.task, self.state.step
        log = MetricsLogger(self.out_dir, total_steps=task.total_steps, start_step=step, jsonl=lg.jsonl,
                            tensorboard=lg.tensorboard, progress=lg.progress, wandb=lg.wandb,
                            wandb_project=lg.wandb_project, run_name=lg.run_name, config=to_dict(task.config))
        if step:
            pos = task.loader.position
            log.message(f"resumed from step {step} of {self.ckpt.directory} (data epoch {pos.epoch}, "
                        f"batch {pos.index})")
        for line in task.start_lines(resumed=bool(step)):
            log.message(line)
        return log

    def _steps(self) -> tuple[str, dict[str, Any]]:
        """Steps until the end or a stop request → (status, the last step's metrics)."""
        st, task, last = self.state, self.task, {}
        with PreemptionHandler() as preempt:
            if st.step == 0 and task.validation_due(0):
                val = task.validate(st)
                if val:
                    self.log.log(0, val)
            while st.step < task.total_steps:
                last = self._step()
                self._after_step(last)
                if preempt.requested and st.step < task.total_steps:
                    self.log.message(f"{preempt.signal_name} received: writing a final checkpoint at step {st.step} "
                                     f"and stopping (resume with train.resume=auto)")
                    return "preempted", last
        return "finished", last

    def _step(self) -> dict[str, Any]:
        """One step of the task, its skip accounting, validation and log line → its metrics."""
        st, task, t = self.state, self.task, self.train
        scale = jnp.float32(np.nan if t.nan_injected(st.step + 1) else 1.0)
        metrics = task.step(st, scale, st.step - self.guard.total)
        st.step += 1
        skipped = bool(metrics["skipped"])
        self.guard.update(skipped)
        metrics["skipped_total"] = self.guard.total
        if task.sandbox is not None:
            metrics["tools/python_sandbox_rlimit"] = float(task.sandbox["mode"] == "rlimit")
        validated = False
        if task.validation_due(st.step):
            val = task.validate(st)
            metrics.update(val)
            validated = bool(val)
        if st.step % self.logging.every == 0 or skipped or st.step == task.total_steps or validated:
            self.log.log(st.step, metrics)
        if skipped:
            self.log.message(f"step {st.step}: non-finite loss or gradient, update skipped "
                             f"({self.guard.consecutive} in a row, {self.guard.total} in all)")
        return metrics

    def _after_step(self, metrics: dict[str, Any]) -> None:
        """Divergence stop, periodic checkpoint and export, the debug sleep."""
        st, t = self.state, self.train
        if self.guard.tripped:
            self._save(wait=True)
            msg = self.guard.message(st.step, self.ckpt.directory)
            self.log.message(msg)
            write_status(self.out_dir, self._summary("diverged", metrics, message=msg))
            raise TrainingDiverged(msg)
        if t.save_every and st.step % t.save_every == 0:
            self._save()
        if t.export_every and st.step % t.export_every == 0:
            self._export(f"step_{st.step}")
        if t.debug_step_sleep:
            time.sleep(t.debug_step_sleep)

    def _summary(self, status: str, last: dict[str, Any], **extra) -> dict[str, Any]:
        out = {"status": status, "step": self.state.step, "total_steps": self.task.total_steps,
               "skipped_total": self.guard.total, "checkpoint_dir": self.ckpt.directory}
        if self.task.sandbox is not None:
            out["python_sandbox"] = self.task.sandbox["mode"]
        out.update(exported=list(self.exported), **extra)
        out.update(self.task.summary(last))
        return to_python(out)
