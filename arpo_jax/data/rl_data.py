"""Prompts for RL: reading the training/validation files and a resumable epoch loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from arpo_jax.data.chat import encode_prompt
from arpo_jax.data.records import Example


def read_prompt_file(spec: str, *, byte_exact: bool = False, lenient: bool = True,
                     system_prompt: str | None = None) -> list[Example]:
    """Examples from a ``.parquet`` (ARPO/verl), a ``.jsonl``/``.json`` eval file, or
    ``tfds:<data_dir>:<split>`` (the array_record store of ``arpo_jax.data.tfds_builder``)."""
    if spec.startswith("tfds:"):
        from arpo_jax.data.tfds_builder import load_examples

        try:
            _, data_dir, split = spec.split(":", 2)
        except ValueError:
            raise ValueError(f"data file {spec!r}: expected tfds:<data_dir>:<split>") from None
        return list(load_examples(data_dir, split))
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data file {spec!r} does not exist")
    if path.suffix == ".parquet":
        from arpo_jax.data.rl_parquet import read_rl_parquet

        return read_rl_parquet(path, byte_exact_prompt=byte_exact, lenient=lenient)
    if path.suffix in (".jsonl", ".json"):
        from arpo_jax.data.eval_jsonl import read_eval_jsonl

        if system_prompt is None:
            from arpo_jax.data.prompts import arpo_system_prompt

            system_prompt = arpo_system_prompt(byte_exact)
        return read_eval_jsonl(path, lenient=lenient, system_prompt=system_prompt)
    raise ValueError(f"data file {spec!r}: unsupported format (use .parquet, .jsonl, .json or tfds:<dir>:<split>)")


def read_prompts(files: Sequence[str], *, byte_exact: bool = False, lenient: bool = True,
                 drop_overlap_with: Sequence[str] = (), system_prompt: str | None = None) -> list[Example]:
    """All examples of ``files`` in order, minus questions that occur in ``drop_overlap_with``."""
    examples = [ex for f in files for ex in read_prompt_file(f, byte_exact=byte_exact, lenient=lenient,
                                                             system_prompt=system_prompt)]
    if drop_overlap_with:
        from arpo_jax.data.overlap import drop_overlap

        evals = {f: read_prompt_file(f, lenient=lenient) for f in drop_overlap_with}
        examples, _ = drop_overlap(examples, evals)
    return examples


def encode_examples(tokenizer, examples: Sequence[Example], template_kwargs: dict | None = None) -> list[list[int]]:
    """Chat-template token ids of every example's prompt (ends with the assistant header)."""
    return [encode_prompt(tokenizer, ex, **(template_kwargs or {})).token_ids for ex in examples]


@dataclasses.dataclass
class PromptPosition:
    """Where the loader stands: ``index`` batches of ``epoch`` have been consumed."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class PromptLoader:
    """Batches of ``batch_size`` prompt indices; a fresh seeded permutation every epoch (the
    last incomplete batch of an epoch is dropped). The position is saved in checkpoints, so a
    resumed run continues with the exact next batch, across epoch boundaries too."""

    def __init__(self, num_examples: int, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        if num_examples < batch_size:
            raise ValueError(f"data.prompts_per_step ({batch_size}) exceeds the {num_examples} training prompts")
        self.n, self.batch_size, self.seed, self.shuffle = num_examples, batch_size, seed, shuffle
        self.position = PromptPosition()

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_batch(self) -> list[int]:
        pos = self.position
        if pos.index >= self.batches_per_epoch:
            pos.epoch, pos.index = pos.epoch + 1, 0
        start = pos.index * self.batch_size
        batch = self.order(pos.epoch)[start:start + self.batch_size].tolist()
        pos.index += 1
        return batch

    def set_position(self, d: dict) -> None:
        self.position = PromptPosition(int(d["epoch"]), int(d["index"]))

    def epoch_float(self) -> float:
        return self.position.epoch + self.position.index / self.batches_per_epoch
