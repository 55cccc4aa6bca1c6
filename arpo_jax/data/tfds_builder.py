"""A TFDS builder that stores ``Example`` splits as array_record, and a reader for them.

Writing and reading need ``tensorflow-datasets`` and ``array_record`` but not TensorFlow:
``GeneratorBasedBuilder`` with ``file_format="array_record"`` serialises with TFDS's own
protobuf code, and ``tfds.data_source`` / ``as_data_source`` read the records back as a
random-access source. (``tfds.dataset_builders.store_as_tfds_dataset`` is not usable here:
it checks ``isinstance(x, tf.data.Dataset)`` and so imports TensorFlow.)

Layout: ``<data_dir>/arpo_examples/<config>/1.0.0/arpo_examples-<split>.array_record-*``
with configs ``rl`` (the RL parquet files, one split per file), ``eval`` (one split per
benchmark) and ``custom``. Reading back::

    src = load_examples(data_dir, "train_10k")            # ExampleSource, len() and [i]
    raw = tfds.data_source("arpo_examples/rl", data_dir=data_dir, split="train_10k")
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import tensorflow_datasets as tfds

from .eval_jsonl import RL_FILES, default_data_root, read_all_eval
from .overlap import Overlap, drop_overlap
from .prompts import arpo_system_prompt
from .records import Example
from .rl_parquet import read_rl_parquet

NAME = "arpo_examples"
TRAIN_SPLITS = ("train_10k", "hard_search_1k")
"""RL files that are training data (deduplicated against the benchmarks by default)."""


def _features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text
    return tfds.features.FeaturesDict(
        {
            "id": text(),
            "data_source": text(),
            "messages": tfds.features.Sequence({"role": text(), "content": text()}),
            "question": text(),
            "answers": tfds.features.Sequence(text()),
            "ability": text(),
            "split": text(),
            "meta": text(),  # JSON
        }
    )


class ArpoExamples(tfds.core.GeneratorBasedBuilder):
    """Example splits (RL training files or benchmarks) stored as array_record."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Example records: messages, answers, meta as JSON."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="rl", description="ARPO RL parquet files, one split per file."),
        tfds.core.BuilderConfig(name="eval", description="Benchmarks, one split per benchmark."),
        tfds.core.BuilderConfig(name="custom", description="Any Example splits."),
    ]

    def __init__(self, *, splits: Mapping[str, Sequence[Example]] | None = None, **kwargs: Any):
        self._splits = splits
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="arpo_jax Example records (see arpo_jax.data.records.Example).",
            features=_features(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        if not self._splits:
            raise ValueError(
                f"{NAME}: nothing to write; construct the builder with splits={{name: examples}}"
            )
        return {name: self._generate_examples(examples) for name, examples in self._splits.items()}

    def _generate_examples(self, examples: Sequence[Example]) -> Iterator[tuple[str, dict[str, Any]]]:
        for ex in examples:
            yield ex.id, to_record(ex)


def to_record(ex: Example) -> dict[str, Any]:
    """The TFDS feature dict of an example."""
    return {
        "id": ex.id,
        "data_source": ex.data_source,
        "messages": [{"role": m["role"], "content": m["content"]} for m in ex.messages],
        "question": ex.question,
        "answers": list(ex.answers),
        "ability": ex.ability,
        "split": ex.split,
        "meta": json.dumps(ex.meta, ensure_ascii=False, sort_keys=True, default=str),
    }


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def from_record(rec: Mapping[str, Any]) -> Example:
    """Inverse of ``to_record`` for a record read back by TFDS (bytes strings)."""
    msgs = rec["messages"]
    messages = [
        {"role": _str(r), "content": _str(c)} for r, c in zip(msgs["role"], msgs["content"], strict=True)
    ]
    return Example(
        id=_str(rec["id"]),
        data_source=_str(rec["data_source"]),
        messages=messages,
        question=_str(rec["question"]),
        answers=[_str(a) for a in rec["answers"]],
        ability=_str(rec["ability"]),
        split=_str(rec["split"]),
        meta=json.loads(_str(rec["meta"])),
    )


class ExampleSource(Sequence[Example]):
    """Random-access ``Example`` view of a TFDS data source (``len``, ``[i]``, ``[a:b]``)."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return self.__getitems__(range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return from_record(self.source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        """Batch access (used by grain-style loaders)."""
        return [from_record(r) for r in self.source.__getitems__(list(indices))] if indices else []


def write_examples(
    splits: Mapping[str, Sequence[Example]],
    data_dir: str | Path,
    *,
    config: str = "custom",
    overwrite: bool = False,
) -> Path:
    """Writes ``{split: examples}`` as array_record under ``data_dir``; returns the dataset dir.

    An existing dataset of the same config is an error unless ``overwrite`` (then it is
    regenerated; TFDS would otherwise silently keep the old files).
    """
    builder = ArpoExamples(splits=splits, config=config, data_dir=str(data_dir))
    if builder.is_prepared() and not overwrite:
        raise FileExistsError(f"{builder.data_path} already exists; pass overwrite=True to regenerate it")
    modes = tfds.download.GenerateMode
    mode = modes.REUSE_CACHE_IF_EXISTS if overwrite else modes.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return Path(str(builder.data_path))


def load_examples(data_dir: str | Path, split: str, *, config: str = "rl") -> ExampleSource:
    """Reads one split back, without TensorFlow, as an ``ExampleSource``."""
    source = tfds.data_source(f"{NAME}/{config}", data_dir=str(data_dir), split=split)
    return ExampleSource(source)


def build_released(
    data_dir: str | Path,
    root: str | Path | None = None,
    *,
    dedupe: bool = True,
    byte_exact_prompt: bool = False,
    lenient: bool = True,
    errors: list[str] | None = None,
    overwrite: bool = False,
) -> tuple[dict[str, Path], list[Overlap]]:
    """Writes the released RL files (config ``rl``) and benchmarks (``eval``) as array_record.

    With ``dedupe`` the training splits (``TRAIN_SPLITS``) lose every question that occurs in
    a benchmark or in the RL test files. Returns the two dataset dirs and the overlaps removed.
    Bad rows are skipped when ``lenient`` (their messages go to ``errors``).
    """
    root = Path(root) if root is not None else default_data_root()
    rl = {
        name: read_rl_parquet(root / rel, byte_exact_prompt=byte_exact_prompt, lenient=lenient, errors=errors)
        for name, rel in RL_FILES.items()
        if (root / rel).is_file()
    }
    if not rl:
        raise FileNotFoundError(f"no RL parquet files under {root / 'rl_datasets'}")
    prompt = arpo_system_prompt(byte_exact=byte_exact_prompt)
    evals = read_all_eval(root, system_prompt=prompt, lenient=lenient, errors=errors)
    removed: list[Overlap] = []
    if dedupe:
        tests = dict(evals) | {k: v for k, v in rl.items() if k not in TRAIN_SPLITS}
        for name in TRAIN_SPLITS:
            if name in rl:
                rl[name], found = drop_overlap(rl[name], tests)
                removed += found
    dirs = {"rl": write_examples(rl, data_dir, config="rl", overwrite=overwrite)}
    if evals:
        dirs["eval"] = write_examples(evals, data_dir, config="eval", overwrite=overwrite)
    return dirs, removed
