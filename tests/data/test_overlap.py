"""Train/test overlap detection and removal."""

from __future__ import annotations

from arpo_jax.data import (
    DataError,
    Example,
    drop_overlap,
    find_overlap,
    normalize_question,
    overlap_counts,
    read_all_eval,
    read_rl_parquet,
)

from .helpers import DATA_ROOT, released


def ex(id_: str, question: str) -> Example:
    return Example(id=id_, data_source="t", messages=[], question=question, answers=["a"])


def test_normalize_question_ignores_case_space_dollars_and_control_bytes():
    assert normalize_question("  Find $x$ if\n x+1=2. ") == "find x if x+1=2."
    assert normalize_question("A\x0cB") == normalize_question("a b")
    assert normalize_question("Ｆｕｌｌ width") == "full width"


def test_find_count_and_drop():
    train = [ex("tr/0", "Who wrote Hamlet?"), ex("tr/1", "2+2?"), ex("tr/2", "who  wrote hamlet?")]
    evals = {"qa": [ex("qa/9", "Who wrote Hamlet?"), ex("qa/10", "Other")], "math": [ex("m/1", "3+3?")]}
    found = find_overlap(train, evals)
    assert sorted((o.train_id, o.eval_id) for o in found) == [("tr/0", "qa/9"), ("tr/2", "qa/9")]
    assert overlap_counts(train, evals) == {"qa": 1, "math": 0}
    kept, removed = drop_overlap(train, evals)
    assert [e.id for e in kept] == ["tr/1"] and len(removed) == 2


def test_released_overlap_counts():
    released("rl_datasets/train_10k.parquet")
    released("eval/hotpotqa/test.jsonl")
    evals = read_all_eval(DATA_ROOT)
    train = read_rl_parquet(DATA_ROOT / "rl_datasets/train_10k.parquet", lenient=True)
    counts = overlap_counts(train, evals)
    assert {k: v for k, v in counts.items() if v} == {"hotpotqa": 5, "SimpleQA": 14}
    hard = read_rl_parquet(DATA_ROOT / "rl_datasets/hard_search_1k.parquet")
    assert {k: v for k, v in overlap_counts(hard, evals).items() if v} == {"hotpotqa": 15, "SimpleQA": 24}
    kept, _ = drop_overlap(train, evals)
    assert len(kept) == 9999 - 19
    assert isinstance(DataError("f", 1, "x", "y"), ValueError)
