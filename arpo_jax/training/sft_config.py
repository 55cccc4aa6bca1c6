"""``SFTConfig``: the typed config of ``arpo-jax sft`` (see ``configs/sft_example.yaml``).

Sections: ``model`` (``arpo_jax.models.ModelSourceConfig``), ``data`` (traces), ``optimizer``,
``train`` (``SFTTrainConfig``: the loop's ``TrainConfig`` and SFT's batches) and ``logging``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from arpo_jax.models.source import ModelSourceConfig
from arpo_jax.training.loop_config import LoggingConfig, TrainConfig
from arpo_jax.data.sft_data import DEFAULT_RESULT_PATTERN
from arpo_jax.training.update import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """Training data (see ``arpo_jax.data.sft_data`` for the formats).

    bucket_window: length bucketing: sort by length within windows of this many batches.
    min_bucket: rows are padded to min_bucket * 2**k (capped at train.max_len); 0 = max_len.
    pack: pack whole examples into rows of train.max_len tokens instead (each attends only to
      itself; train.batch_size then counts rows): random batches with almost no padding.
    pack_window: rows open to first-fit packing at once.
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
    pack: bool = False
    pack_window: int = 16
    template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SFTTrainConfig(TrainConfig):
    """``TrainConfig`` (the loop: steps, checkpoints, exports, safety) and SFT's batches.

    batch_size: global rows per update, split into ``micro_batches`` for gradient accumulation.
    max_len: tokens per row (longer examples are cut or dropped: ``data.truncate``).
    logits_chunk: 1024 bounds the fp32 logits for long rows and large vocabularies at ~2 %
      more compute for a 7B model.
    eval_every: loss and accuracy on ``data.eval_files`` every n steps (0 = never), in batches
      of ``eval_batch_size`` rows (0 = ``batch_size``).
    """

    out_dir: str = "runs/sft"
    save_every: int = 100
    batch_size: int = 8
    micro_batches: int = 1
    max_len: int = 2048
    eval_every: int = 0
    eval_batch_size: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1 or self.micro_batches < 1 or self.batch_size % self.micro_batches:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a positive multiple of "
                             f"train.micro_batches ({self.micro_batches})")
        if self.max_len < 2:
            raise ValueError(f"train.max_len must be >= 2, got {self.max_len}")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Everything ``run_sft`` needs; load with ``load_config(SFTConfig, path, overrides)``."""

    model: ModelSourceConfig
    data: SFTDataConfig = dataclasses.field(default_factory=SFTDataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(lr=1e-5))
    train: SFTTrainConfig = dataclasses.field(default_factory=SFTTrainConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=lambda: LoggingConfig(run_name="sft"))
