"""The configs of the training loop (``training.loop``) shared by ``arpo-jax sft`` and ``train``.

``TrainConfig`` holds the loop's own settings (length, checkpoints, exports, safety, debug
hooks); ``SFTTrainConfig`` and ``RLTrainConfig`` extend it with their update's settings, so
every key stays under ``train.`` in the YAML files. ``LoggingConfig`` is the ``logging``
section of both.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop, checkpoint, export and safety settings. Steps count from 1.

    steps: total steps (0: ``epochs`` passes over the training data).
    logits_chunk: compute the loss's fp32 logits this many positions at a time, recomputing
      them in the backward pass (0 = all [B, T, V] at once).
    seed: data order (and the RL rollouts' randomness).
    checkpoint_dir: default ``<out_dir>/checkpoints``; any orbax path (``gs://``).
    resume: "auto" (latest valid checkpoint, else start), "none", or a step number.
    keep / async_checkpoint: checkpoints kept; save in the background.
    save_every / export_every: intervals in steps (0 = never; a final checkpoint and, with
      ``export_at_end``, a final HF export under ``<export_dir>/final`` are always written).
    export_dir: default ``<out_dir>/hf``; export_dtype: storage dtype of the exports.
    max_consecutive_skips: stop after this many non-finite updates in a row (0 = never), with a
      checkpoint (``TrainingDiverged``).
    preempt_exit_code: exit status of the command after SIGTERM (final checkpoint written).
    debug_nan_step / debug_nan_count: multiply the loss by NaN at steps
      [debug_nan_step, debug_nan_step + debug_nan_count) (0 = off), to test the safety path.
    debug_step_sleep: seconds to sleep after each step (tests of kill/resume).
    """

    steps: int = 0
    epochs: int = 1
    logits_chunk: int = 0
    seed: int = 0
    out_dir: str = "runs/train"
    checkpoint_dir: str = ""
    resume: str | int = "auto"
    keep: int = 3
    save_every: int = 10
    async_checkpoint: bool = True
    export_every: int = 0
    export_dir: str = ""
    export_at_end: bool = True
    export_dtype: str | None = None
    max_consecutive_skips: int = 5
    preempt_exit_code: int = 0
    debug_nan_step: int = 0
    debug_nan_count: int = 1
    debug_step_sleep: float = 0.0

    def __post_init__(self):
        if self.steps < 0 or (self.epochs < 1 and not self.steps):
            raise ValueError("train.steps must be >= 0 and train.epochs >= 1 when steps is 0")
        if self.logits_chunk < 0:
            raise ValueError(f"train.logits_chunk must be >= 0, got {self.logits_chunk}")

    def nan_injected(self, step: int) -> bool:
        """Whether ``debug_nan_step`` poisons the loss of step ``step`` (counted from 1)."""
        return bool(self.debug_nan_step) and self.debug_nan_step <= step < self.debug_nan_step + self.debug_nan_count


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Sinks: console progress bar, ``metrics.jsonl``, TensorBoard, W&B (only if installed).

    every: write a step's metrics every n steps; steps with a skipped update, a validation or
      evaluation, and the last step are always written.
    """

    every: int = 1
    progress: bool = True
    jsonl: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "arpo_jax"
    run_name: str = "train"

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"logging.every must be >= 1, got {self.every}")
