"""TFDS array_record store: write, read back without TensorFlow, use as a data source."""

from __future__ import annotations

import subprocess
import sys

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from arpo_jax.data import Example  # noqa: E402
from arpo_jax.data.tfds_builder import (  # noqa: E402
    ExampleSource,
    build_released,
    from_record,
    load_examples,
    to_record,
    write_examples,
)

from .helpers import DATA_ROOT, released  # noqa: E402

EXAMPLES = [
    Example(
        id=f"mini/{i}",
        data_source="mini",
        messages=[{"role": "system", "content": "S \x08oxed"}, {"role": "user", "content": f"Q{i} ünï"}],
        question=f"Q{i} ünï",
        answers=["a", "b"][: 1 + i % 2],
        ability="math" if i % 2 else "qa",
        split="train",
        meta={"row": i, "nested": {"k": [1, 2]}},
    )
    for i in range(5)
]


def test_record_round_trip_in_memory():
    rec = to_record(EXAMPLES[1])
    encoded = {k: (v.encode() if isinstance(v, str) else v) for k, v in rec.items()}
    encoded["answers"] = [a.encode() for a in rec["answers"]]
    encoded["messages"] = {
        "role": [m["role"].encode() for m in rec["messages"]],
        "content": [m["content"].encode() for m in rec["messages"]],
    }
    assert from_record(encoded) == EXAMPLES[1]


def test_write_and_read_back(tmp_path):
    tfds.disable_progress_bar()
    path = write_examples({"train": EXAMPLES, "test": EXAMPLES[:2]}, tmp_path)
    assert sorted(p.name for p in path.glob("*.array_record*")) == [
        "arpo_examples-test.array_record-00000-of-00001",
        "arpo_examples-train.array_record-00000-of-00001",
    ]
    src = load_examples(tmp_path, "train", config="custom")
    assert isinstance(src, ExampleSource) and len(src) == 5
    assert list(src) == EXAMPLES  # order kept (shuffling disabled)
    assert src[-1] == EXAMPLES[-1] and src[1:3] == EXAMPLES[1:3]
    assert src.__getitems__([4, 0]) == [EXAMPLES[4], EXAMPLES[0]]
    with pytest.raises(IndexError):
        src[5]
    raw = tfds.data_source("arpo_examples/custom", data_dir=str(tmp_path), split="test")
    assert len(raw) == 2 and raw[0]["id"] == b"mini/0"
    assert "tensorflow" not in sys.modules


def test_read_back_in_a_fresh_process_without_tensorflow(tmp_path):
    path = write_examples({"train": EXAMPLES}, tmp_path)
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        f"src = tfds.builder_from_directory({str(path)!r}).as_data_source(split='train')\n"
        "print(len(src), src[3]['question'].decode(), 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["5", "Q3", "ünï", "False"]


def test_existing_dataset_needs_overwrite(tmp_path):
    write_examples({"train": EXAMPLES}, tmp_path)
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        write_examples({"train": EXAMPLES[:2]}, tmp_path)
    write_examples({"train": EXAMPLES[:2]}, tmp_path, overwrite=True)
    assert list(load_examples(tmp_path, "train", config="custom")) == EXAMPLES[:2]


def test_nothing_to_write_is_reported(tmp_path):
    with pytest.raises(ValueError, match="nothing to write"):
        write_examples({}, tmp_path)


def test_build_released(tmp_path):
    released("rl_datasets/train_10k.parquet")
    released("eval/gsm8k/test.jsonl")
    errors: list[str] = []
    dirs, removed = build_released(tmp_path, DATA_ROOT, errors=errors)
    assert set(dirs) == {"rl", "eval"} and len(errors) == 1  # train_10k row 5274
    assert len(removed) == 19 + 39
    assert len(load_examples(tmp_path, "train_10k")) == 9999 - 19
    assert len(load_examples(tmp_path, "hard_search_1k")) == 1071 - 39
    assert len(load_examples(tmp_path, "valid")) == 180
    gsm = load_examples(tmp_path, "gsm8k", config="eval")
    assert len(gsm) == 1319 and gsm[0].answers == ["18"]
    assert "\x08" not in load_examples(tmp_path, "hle_test")[0].messages[0]["content"]
