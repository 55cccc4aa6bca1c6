"""``SFTConfig``: the typed config of ``arpo-jax sft`` (see ``configs/sft_example.yaml``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from arpo_jax.training.sft_data import DEFAULT_RESULT_PATTERN
from arpo_jax.training.update import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class SFTModelConfig:
    """Where the model and tokenizer come from.

    path: HF checkpoint directory (``load_hf``) or arpo_jax checkpoint (``load_native``).
    preset / config: random initialisation from a preset name and/or ``ModelConfig`` fields
      (e.g. ``{hidden_size: 64, num_layers: 2}``); ``vocab_size`` defaults to the tokenizer's.
    tokenizer: tokenizer directory (default: ``path``).
    dtype / param_dtype: compute and storage dtypes ("float32" or "bfloat16").
    mesh: (data, fsdp, tensor) device mesh shape; -1 = the remaining devices.
    """

    path: str | None = None
    preset: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: str | None = None
    dtype: str | None = None
    param_dtype: str | None = None
    init_seed: int = 0
    mesh: tuple[int, int, int] = (1, -1, 1)
    remat: bool = False

    def __post_init__(self):
        if self.path and (self.preset or self.config):
            raise ValueError("set model.path (a checkpoint) or model.preset/model.config (random init), not both")
        if not (self.path or self.preset or self.config):
            raise ValueError("set model.path (a checkpoint) or model.preset/model.config (random init)")
        if not (self.tokenizer or self.path):
            raise ValueError("model.tokenizer is required when the model is randomly initialised")


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """Training data (see ``arpo_jax.training.sft_data`` for the formats).

    bucket_window: length bucketing: sort by length within windows of this many batches.
    min_bucket: rows are padded to min_bucket * 2**k (capped at train.max_len); 0 = max_len.
    truncate: cut examples longer than train.max_len (else drop them).
    lenient: skip malformed rows (counted) instead of failing on the first one.
    template_kwargs: extra chat-template arguments (e.g. ``{enable_thinking: false}``).
    """

    train_files: list[str] = dataclasses.field(default_factory=list)
    eval_files: list[str] = dataclasses.field(default_factory=list)
    format: Literal["auto", "sharegpt", "messages", "trace"] = "auto"
    tool_result_pattern: str = DEFAULT_RESULT_PATTERN
    truncate: bool = True
    lenient: bool = False
    shuffle: bool = True
    bucket_window: int = 16
    min_bucket: int = 64
    template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SFTTrainConfig:
    """Loop, checkpoint and safety settings. Steps count optimizer updates, from 1.

    steps: total updates (0: ``epochs`` full epochs). batch_size: global rows per update,
      split into ``micro_batches`` for gradient accumulation.
    logits_chunk: compute the loss's fp32 logits this many positions at a time, recomputing
      them in the backward pass (0 = all [B, T, V] at once; 1024 bounds them for long rows and
      large vocabularies at ~2 % more compute for a 7B model).
    checkpoint_dir: default ``<out_dir>/checkpoints``; any orbax path (``gs://``).
    resume: "auto" (latest valid checkpoint, else start), "none", or a step number.
    save_every / eval_every / export_every: intervals in steps (0 = never; a final checkpoint
      and, with ``export_at_end``, a final HF export are always written).
    max_consecutive_skips: stop after this many non-finite updates in a row (0 = never).
    preempt_exit_code: exit status of ``arpo-jax sft`` after SIGTERM (final checkpoint written).
    debug_nan_step / debug_nan_count: multiply the loss by NaN at steps
      [debug_nan_step, debug_nan_step + debug_nan_count) (0 = off), to test the safety path.
    debug_step_sleep: seconds to sleep after each step (tests of kill/resume).
    """

    steps: int = 0
    epochs: int = 1
    batch_size: int = 8
    micro_batches: int = 1
    logits_chunk: int = 0
    max_len: int = 2048
    seed: int = 0
    out_dir: str = "runs/sft"
    checkpoint_dir: str = ""
    resume: str | int = "auto"
    keep: int = 3
    save_every: int = 100
    async_checkpoint: bool = True
    eval_every: int = 0
    eval_batch_size: int = 0
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
        if self.steps < 0 or self.epochs < 1 and not self.steps:
            raise ValueError("train.steps must be >= 0 and train.epochs >= 1 when steps is 0")
        if self.batch_size < 1 or self.micro_batches < 1 or self.batch_size % self.micro_batches:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a positive multiple of "
                             f"train.micro_batches ({self.micro_batches})")
        if self.logits_chunk < 0:
            raise ValueError(f"train.logits_chunk must be >= 0, got {self.logits_chunk}")
        if self.max_len < 2:
            raise ValueError(f"train.max_len must be >= 2, got {self.max_len}")


@dataclasses.dataclass(frozen=True)
class SFTLoggingConfig:
    """Sinks: console progress bar, ``metrics.jsonl``, TensorBoard, W&B (only if installed)."""

    every: int = 1
    progress: bool = True
    jsonl: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "arpo_jax"
    run_name: str = "sft"


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Everything ``run_sft`` needs; load with ``load_config(SFTConfig, path, overrides)``."""

    model: SFTModelConfig
    data: SFTDataConfig = dataclasses.field(default_factory=SFTDataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(lr=1e-5))
    train: SFTTrainConfig = dataclasses.field(default_factory=SFTTrainConfig)
    logging: SFTLoggingConfig = dataclasses.field(default_factory=SFTLoggingConfig)
