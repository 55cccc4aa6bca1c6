"""RL parquet reader: verl schema, tolerated variants, bad rows, and the released files."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arpo_jax.data import (
    ARPO_SYSTEM_PROMPT,
    ARPO_SYSTEM_PROMPT_RAW,
    DataError,
    read_rl_parquet,
)

from .helpers import released

SYS_RAW = "Put it in \x08oxed{} please."


def verl_row(i: int, question: str, answer: object, ability: str | None = "qa") -> dict:
    return {
        "data_source": "DR_test",
        "prompt": [{"role": "system", "content": SYS_RAW}, {"role": "user", "content": question}],
        "ability": ability,
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": i, "question": question, "split": "train"},
    }


def write(tmp_path, rows, name="part.parquet"):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_verl_schema_is_read(tmp_path):
    path = write(tmp_path, [verl_row(0, "Who?", "Ann", "qa"), verl_row(7, "1+1?", "2", "math")])
    a, b = read_rl_parquet(path)
    assert a.id == "part/0" and b.id == "part/7"
    assert a.data_source == "DR_test" and a.ability == "qa" and b.ability == "math"
    assert a.question == "Who?" and a.answers == ["Ann"] and b.answers == ["2"]
    assert a.split == "train"
    assert a.messages == [
        {"role": "system", "content": "Put it in \\boxed{} please."},
        {"role": "user", "content": "Who?"},
    ]
    assert a.meta["reward_style"] == "rule" and a.meta["row"] == 0


def test_byte_exact_flag_keeps_the_backspace(tmp_path):
    path = write(tmp_path, [verl_row(0, "Who?", "Ann")])
    (ex,) = read_rl_parquet(path, byte_exact_prompt=True)
    assert ex.messages[0]["content"] == SYS_RAW


def test_question_column_and_json_string_fields(tmp_path):
    rows = [
        {
            "data_source": "DR_x",
            "question": "Capital of France?",
            "reward_model": json.dumps({"ground_truth": {"target": ["Paris", "paris, France"]}}),
            "extra_info": json.dumps({"index": 3, "split": "test", "source": "hand"}),
        }
    ]
    (ex,) = read_rl_parquet(write(tmp_path, rows))
    assert ex.id == "part/3" and ex.split == "test" and ex.ability == ""
    assert ex.answers == ["Paris", "paris, France"]
    assert ex.messages == [
        {"role": "system", "content": ARPO_SYSTEM_PROMPT},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert ex.meta["source"] == "hand"


def test_prompt_as_json_string_and_answer_column(tmp_path):
    rows = [
        {
            "data_source": "DR_y",
            "prompt": json.dumps([{"role": "user", "content": "2*3?"}]),
            "answer": 6,
        }
    ]
    (ex,) = read_rl_parquet(write(tmp_path, rows))
    assert ex.messages == [{"role": "user", "content": "2*3?"}]
    assert ex.question == "2*3?" and ex.answers == ["6"] and ex.id == "part/0"


def test_interval_answer_stays_one_answer(tmp_path):
    (ex,) = read_rl_parquet(write(tmp_path, [verl_row(0, "Range?", "[0, 1]", "math")]))
    assert ex.answers == ["[0, 1]"]


def test_repair_escapes_fixes_frac_in_questions(tmp_path):
    (ex,) = read_rl_parquet(write(tmp_path, [verl_row(0, "Find \x0crac{m}{n}.", "1")]), repair_escapes=True)
    assert ex.question == "Find \\frac{m}{n}." and ex.messages[1]["content"] == "Find \\frac{m}{n}."


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ({"data_source": ""}, "data_source"),
        ({"prompt": "not json"}, "prompt"),
        ({"prompt": "[{bad json"}, "prompt"),
        ({"prompt": [{"role": "robot", "content": "x"}]}, "prompt[0].role"),
        ({"prompt": [{"role": "system", "content": "only system"}]}, "prompt"),
        ({"reward_model": {"ground_truth": "  ", "style": "rule"}}, "reward_model.ground_truth"),
        ({"reward_model": None}, "reward_model.ground_truth"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, broken, field):
    rows = [verl_row(0, "Q0", "A0"), {**verl_row(1, "Q1", "A1"), **broken}, verl_row(2, "Q2", "A2")]
    if isinstance(broken.get("prompt"), str):  # one column type per file: all prompts as JSON text
        rows = [r if r is rows[1] else {**r, "prompt": json.dumps(r["prompt"])} for r in rows]
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        read_rl_parquet(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1: field '{field}':"), message
    assert "\n" not in message
    errors: list[str] = []
    examples = read_rl_parquet(path, lenient=True, errors=errors)
    assert [e.id for e in examples] == ["part/0", "part/2"]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:1: field '{field}'")


def test_duplicate_index_is_an_error(tmp_path):
    path = write(tmp_path, [verl_row(5, "Q", "A"), verl_row(5, "Q2", "A2")])
    with pytest.raises(DataError, match="duplicate id 'part/5'"):
        read_rl_parquet(path)


def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: field '<file>'"):
        read_rl_parquet(path)


# ---- the released files -------------------------------------------------------------


def test_released_train_10k():
    path = released("rl_datasets/train_10k.parquet")
    with pytest.raises(DataError, match=r"train_10k.parquet:5274: field 'reward_model.ground_truth': empty"):
        read_rl_parquet(path)
    errors: list[str] = []
    examples = read_rl_parquet(path, lenient=True, errors=errors)
    assert len(examples) == 9999 and len(errors) == 1
    assert Counter(e.ability for e in examples) == {"qa": 5000, "math": 4999}
    assert {e.data_source for e in examples} == {"DR_grpo_mix"}
    assert examples[0].answers == ["3\\sqrt{3} - 6"]
    assert all(e.messages[0]["content"] == ARPO_SYSTEM_PROMPT for e in examples)
    assert "\x08" not in ARPO_SYSTEM_PROMPT and ARPO_SYSTEM_PROMPT.count("\\boxed{") == 2


@pytest.mark.parametrize(
    ("name", "rows", "sources"),
    [
        ("valid", 180, {"DR_grpo_mix"}),
        ("hard_search_1k", 1071, {"DR_simpledeepsearch0.8k", "DR_nan"}),
        ("gaia_test", 103, {"DR_gaia"}),
        ("hle_test", 100, {"DR_hle_100"}),
    ],
)
def test_released_small_files(name, rows, sources):
    examples = read_rl_parquet(released(f"rl_datasets/{name}.parquet"), byte_exact_prompt=True)
    assert len(examples) == rows
    assert {e.data_source for e in examples} == sources
    assert all(e.messages[0]["content"] == ARPO_SYSTEM_PROMPT_RAW for e in examples)
    assert all(e.question == e.messages[1]["content"] for e in examples)
