"""``RLConfig``: the typed config of ``arpo-jax train`` (see ``configs/*.yaml``).

Sections: ``model`` (checkpoint or random init, mesh: ``arpo_jax.models.ModelSourceConfig``),
``data`` (prompts), ``rollout`` (policy and budgets, ``arpo_jax.rollout.RolloutConfig``),
``tools`` (protocol, Python, search, dispatcher: ``arpo_jax.tools.ToolsConfig``), ``reward``,
``algorithm`` (advantages), ``loss`` (PPO), ``optimizer``, ``train`` (``RLTrainConfig``: the
loop's ``TrainConfig``, the update, validation) and ``logging``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from arpo_jax.algorithms.estimators import check_estimator
from arpo_jax.algorithms.losses import PolicyLossConfig
from arpo_jax.models.source import ModelSourceConfig
from arpo_jax.rewards.types import RewardConfig
from arpo_jax.rollout.config import RolloutConfig
from arpo_jax.tools.config import ToolsConfig
from arpo_jax.training.loop_config import LoggingConfig, TrainConfig
from arpo_jax.training.update import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class RLDataConfig:
    """Prompts for training and validation.

    train_files / val_files: ARPO/verl parquet files (``read_rl_parquet``), eval JSONL files
      (``read_eval_jsonl``, the set named after the parent directory) or a TFDS array_record
      directory written by ``arpo_jax.data.tfds_builder`` (``tfds:<dir>:<split>``).
    prompts_per_step: prompts per RL step (the paper's batch of 128); each gets M trajectories.
    val_prompts: 0 = the whole validation set.
    byte_exact_system_prompt: keep the released system prompt's ``\\x08oxed`` corruption.
    system_prompt: for JSONL prompt files: None = the ARPO system prompt, "" = none, else this
      text (parquet files carry their own).
    drop_overlap_with: eval JSONL files whose questions are removed from the training set.
    template_kwargs: extra chat-template arguments (e.g. ``{enable_thinking: false}``).
    """

    train_files: list[str] = dataclasses.field(default_factory=list)
    val_files: list[str] = dataclasses.field(default_factory=list)
    prompts_per_step: int = 128
    val_prompts: int = 0
    shuffle: bool = True
    byte_exact_system_prompt: bool = False
    system_prompt: str | None = None
    drop_overlap_with: list[str] = dataclasses.field(default_factory=list)
    lenient: bool = True
    template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.prompts_per_step < 1:
            raise ValueError(f"data.prompts_per_step must be >= 1, got {self.prompts_per_step}")


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """Advantage estimation.

    advantage: a registered estimator (``arpo_jax.algorithms.estimators.ESTIMATORS``): "grpo"
      (group = all trajectories of a prompt), "arpo_soft" (GRPO over the tree: the paper's
      default, identical numbers to grpo on the same trajectories), "arpo_hard" (shared
      segments get the mean advantage of the trajectories containing them, counted once),
      "reinforce_pp", and Tree-GRPO's "tree" (intra-tree + inter-tree GRPO), "tree_inner",
      "tree_2norm" (docs/beyond.md).
    norm_by_std: divide by the group's reward std (False: Dr.GRPO-style centring only).
    eps: added to the std (release: 1e-6).
    """

    advantage: str = "arpo_soft"
    norm_by_std: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        check_estimator(self.advantage)


@dataclasses.dataclass(frozen=True)
class RLTrainConfig(TrainConfig):
    """``TrainConfig`` (the loop: steps, checkpoints, exports, safety) and the RL update's and
    validation's settings. A step = one rollout batch and its updates.

    steps: total RL steps (0: ``epochs`` passes over the training prompts).
    mini_batches: optimizer updates per step (the batch's prompts split into this many
      mini-batches, as verl's ppo_mini_batch_size); ppo_epochs: passes over them.
    micro_batch_size: trajectories per forward/backward pass (0 = the whole mini-batch);
      gradients are accumulated exactly.
    old_logprobs: "sampler" (the log-probs recorded while sampling) or "recompute" (a forward
      pass of the policy before the update, as verl); the gap is a metric either way.
    logits_chunk: log-probs over time chunks of this many tokens, so [B, T, V] logits are never
      materialised for long sequences.
    pad_len: pad every update batch to this many tokens (e.g. max prompt + max response), so
      the update compiles once (0: power-of-two length buckets, one compilation per bucket).
    packing: the update (and log-prob scoring) on tree-packed rows: each unique token of a
      prompt's rollout tree computed once (``algorithms.packing``), the same loss and gradients
      as one padded row per trajectory (False, the default: a micro-batch then holds whole trees
      of up to max_prompt + M·max_response tokens, more memory per device at the paper's lengths,
      see configs/README.md).
    val_every: greedy validation (no branching) every n steps (0 = never); val_before_train.
    dump_rollouts: write every step's trajectories to ``<out_dir>/rollouts``.
    """

    mini_batches: int = 1
    ppo_epochs: int = 1
    micro_batch_size: int = 0
    old_logprobs: Literal["sampler", "recompute"] = "sampler"
    pad_len: int = 0
    packing: bool = False
    val_every: int = 0
    val_before_train: bool = False
    dump_rollouts: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.pad_len < 0:
            raise ValueError("train.pad_len must be >= 0")
        if self.mini_batches < 1 or self.ppo_epochs < 1 or self.micro_batch_size < 0:
            raise ValueError("train.mini_batches and train.ppo_epochs must be >= 1, micro_batch_size >= 0")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Everything ``run_train`` needs; load with ``load_config(RLConfig, path, overrides)``."""

    model: ModelSourceConfig
    data: RLDataConfig = dataclasses.field(default_factory=RLDataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    tools: ToolsConfig = dataclasses.field(default_factory=ToolsConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    loss: PolicyLossConfig = dataclasses.field(default_factory=PolicyLossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: RLTrainConfig = dataclasses.field(default_factory=RLTrainConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
