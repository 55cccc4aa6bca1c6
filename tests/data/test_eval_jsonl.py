"""Benchmark readers: each file's own field names, answers, ids, bad lines, released counts."""

from __future__ import annotations

import json

import pytest

from arpo_jax.data import ARPO_SYSTEM_PROMPT, DataError, read_eval_jsonl, read_eval_set

from .helpers import DATA_ROOT, released


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_question_string_answer_list(tmp_path):
    path = write_jsonl(tmp_path / "hotpotqa" / "test.jsonl", [{"question": "Q?", "answer": ["A", " B "]}])
    (ex,) = read_eval_jsonl(path)
    assert ex.id == "hotpotqa/0" and ex.data_source == "hotpotqa" and ex.ability == "qa"
    assert ex.answers == ["A", "B"] and ex.split == "test"
    assert ex.messages == [
        {"role": "system", "content": ARPO_SYSTEM_PROMPT},
        {"role": "user", "content": "Q?"},
    ]


def test_problem_field_and_integer_answer(tmp_path):
    path = write_jsonl(tmp_path / "aime25" / "test.jsonl", [{"problem": "Find n.", "answer": 70, "id": "0"}])
    (ex,) = read_eval_jsonl(path)
    assert ex.question == "Find n." and ex.answers == ["70"] and ex.id == "aime25/0" and ex.ability == "math"


def test_capital_question_field_and_extra_fields_in_meta(tmp_path):
    rows = [{"id": 1, "task_id": "t-1", "Question": "Where?", "answer": "34689", "Level": 2}]
    (ex,) = read_eval_jsonl(write_jsonl(tmp_path / "gaia" / "test.jsonl", rows))
    assert ex.id == "gaia/1" and ex.question == "Where?" and ex.answers == ["34689"]
    assert ex.meta["Level"] == 2 and ex.meta["task_id"] == "t-1"


def test_gsm8k_final_answer_after_hashes(tmp_path):
    rows = [{"question": "Eggs?", "answer": "16 - 3 = <<16-3=13>>13\n#### 13", "idx": 4}]
    (ex,) = read_eval_jsonl(write_jsonl(tmp_path / "gsm8k" / "test.jsonl", rows))
    assert ex.answers == ["13"] and ex.id == "gsm8k/4" and ex.ability == "math"
    assert ex.meta["solution"].startswith("16 - 3")


def test_json_array_file_name_and_custom_system_prompt(tmp_path):
    path = tmp_path / "hle_top.json"
    path.write_text(json.dumps([{"id": "x", "question": "Pick one", "answer": "D"}]))
    (ex,) = read_eval_jsonl(path, system_prompt="")
    assert ex.id == "hle_top/x" and ex.messages == [{"role": "user", "content": "Pick one"}]
    (ex2,) = read_eval_jsonl(path, name="hle", system_prompt="Be brief.")
    assert ex2.id == "hle/x" and ex2.messages[0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("{not json", "<json>"),
        ('["a list"]', "<row>"),
        ('{"answer": "A"}', "question"),
        ('{"question": "Q"}', "answer"),
        ('{"question": "", "answer": "A"}', "question"),
        ('{"question": "Q", "answer": []}', "answer"),
        ('{"question": "Q", "answer": [null]}', "answer"),
    ],
)
def test_bad_line_names_file_row_and_field(tmp_path, line, field):
    path = tmp_path / "bamboogle" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(
        '{"question": "Q0", "answer": "A0"}\n' + line + "\n\n" + '{"question": "Q3", "answer": "A3"}\n'
    )
    with pytest.raises(DataError) as info:
        read_eval_jsonl(path)
    assert str(info.value).startswith(f"{path}:1: field '{field}':"), str(info.value)
    errors: list[str] = []
    examples = read_eval_jsonl(path, lenient=True, errors=errors)
    assert [e.id for e in examples] == ["bamboogle/0", "bamboogle/3"] and len(errors) == 1


def test_unknown_benchmark_name():
    with pytest.raises(KeyError, match="unknown benchmark 'nope'"):
        read_eval_set("nope", DATA_ROOT)


RELEASED = {
    "aime24": 30,
    "aime25": 30,
    "math500": 500,
    "gsm8k": 1319,
    "hotpotqa": 200,
    "2wiki": 200,
    "musique": 200,
    "bamboogle": 125,
    "SimpleQA": 500,
    "webwalker": 200,
    "gaia": 103,
    "xbench": 100,
    "hle": 500,
}


@pytest.mark.parametrize(("name", "rows"), sorted(RELEASED.items()))
def test_released_benchmark_counts(name, rows):
    rel = "eval/hle_top.json" if name == "hle" else f"eval/{name}/test.jsonl"
    released(rel)
    examples = read_eval_set(name, DATA_ROOT)
    assert len(examples) == rows
    assert all(e.question.strip() and e.answers for e in examples)


def test_released_answer_shapes():
    released("eval/gsm8k/test.jsonl")
    gsm = read_eval_set("gsm8k", DATA_ROOT)
    assert gsm[0].answers == ["18"] and gsm[1].answers == ["3"]
    assert read_eval_set("aime25", DATA_ROOT)[0].answers == ["70"]
    assert read_eval_set("aime24", DATA_ROOT)[0].answers == ["204"]
    wiki = read_eval_set("2wiki", DATA_ROOT)[0]
    assert (
        wiki.answers[:3] == ["the five boroughs", "City of New York", "New York"] and len(wiki.answers) == 8
    )
    assert read_eval_set("gaia", DATA_ROOT)[0].answers == ["34689"]
    assert read_eval_set("hle", DATA_ROOT)[0].answers == ["D"]
