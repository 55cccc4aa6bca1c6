"""Readers for the evaluation benchmarks, each with its own field names.

Questions come as ``question``, ``problem`` (aime25) or ``Question`` (gaia); answers as a
string, a number (aime25) or a list of aliases (the QA sets); gsm8k keeps its worked
solution and puts the final answer after ``#### ``. ``eval/hle_top.json`` is JSON Lines
despite its name; a JSON array is accepted too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .prompts import arpo_system_prompt, build_messages
from .records import BadJson, DataError, Example, as_answers, check_unique_ids, collect, read_json_rows

EVAL_FILES: dict[str, str] = {
    "aime24": "eval/aime24/test.jsonl",
    "aime25": "eval/aime25/test.jsonl",
    "math500": "eval/math500/test.jsonl",
    "gsm8k": "eval/gsm8k/test.jsonl",
    "hotpotqa": "eval/hotpotqa/test.jsonl",
    "2wiki": "eval/2wiki/test.jsonl",
    "musique": "eval/musique/test.jsonl",
    "bamboogle": "eval/bamboogle/test.jsonl",
    "SimpleQA": "eval/SimpleQA/test.jsonl",
    "webwalker": "eval/webwalker/test.jsonl",
    "gaia": "eval/gaia/test.jsonl",
    "xbench": "eval/xbench/test.jsonl",
    "hle": "eval/hle_top.json",
}
"""Benchmark name -> path relative to the data root (``../shared/data/arpo``)."""

RL_FILES: dict[str, str] = {
    name: f"rl_datasets/{name}.parquet"
    for name in ("train_10k", "valid", "hard_search_1k", "gaia_test", "hle_test")
}
"""Released RL parquet files -> path relative to the data root."""

MATH_BENCHMARKS = frozenset({"aime24", "aime25", "math500", "gsm8k", "math", "amc23"})

QUESTION_FIELDS = ("question", "problem", "Question")
ANSWER_FIELDS = ("answer", "answers", "golden_answers", "Final answer", "final_answer")
ID_FIELDS = ("id", "idx", "task_id")


def default_data_root() -> Path:
    """``$ARPO_DATA_ROOT`` or ``../shared/data/arpo`` beside the repository (may not exist)."""
    if os.environ.get("ARPO_DATA_ROOT"):
        return Path(os.environ["ARPO_DATA_ROOT"])
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "arpo"


def read_eval_jsonl(
    path: str | Path,
    name: str | None = None,
    *,
    system_prompt: str | None = None,
    lenient: bool = False,
    errors: list[str] | None = None,
) -> list[Example]:
    """Reads one benchmark file into ``Example`` records.

    Args:
        path: a JSON Lines file (or a JSON array).
        name: the benchmark name, used as ``data_source`` and id prefix; defaults to the
            parent folder (``eval/<name>/test.jsonl``) or the file stem.
        system_prompt: the system message to prepend; ``None`` means the (fixed) ARPO prompt,
            ``""`` means no system message.
        lenient: skip bad rows (counted) instead of raising ``DataError``.
        errors: optional list that receives one message per skipped row.
    """
    path = Path(path)
    if name is None:
        name = path.parent.name if path.stem == "test" else path.stem
    if system_prompt is None:
        system_prompt = arpo_system_prompt()
    prompt = system_prompt or None
    ability = "math" if name in MATH_BENCHMARKS else "qa"

    def parse(i: int, row: Any) -> Example:
        return _parse_row(i, row, str(path), name, prompt, ability)

    examples = collect(read_json_rows(path, lenient=True), parse, path=str(path), lenient=lenient, errors=errors)
    check_unique_ids(examples, str(path))
    return examples


def read_eval_set(name: str, root: str | Path | None = None, **kwargs: Any) -> list[Example]:
    """Reads benchmark ``name`` (a key of ``EVAL_FILES``) under ``root``."""
    if name not in EVAL_FILES:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(EVAL_FILES)}")
    root = Path(root) if root is not None else default_data_root()
    return read_eval_jsonl(root / EVAL_FILES[name], name, **kwargs)


def read_all_eval(root: str | Path | None = None, **kwargs: Any) -> dict[str, list[Example]]:
    """Reads every benchmark of ``EVAL_FILES`` present under ``root``."""
    root = Path(root) if root is not None else default_data_root()
    return {
        name: read_eval_jsonl(root / rel, name, **kwargs)
        for name, rel in EVAL_FILES.items()
        if (root / rel).is_file()
    }


def _parse_row(i: int, row: Any, path: str, name: str, prompt: str | None, ability: str) -> Example:
    if isinstance(row, BadJson):
        raise DataError(path, i, "<json>", row.problem)
    if not isinstance(row, dict):
        raise DataError(path, i, "<row>", f"expected a JSON object, got {type(row).__name__}")
    qfield = next((f for f in QUESTION_FIELDS if f in row), None)
    if qfield is None:
        raise DataError(path, i, "question", f"missing (looked for {', '.join(QUESTION_FIELDS)})")
    question = row[qfield]
    if not isinstance(question, str) or not question.strip():
        raise DataError(path, i, qfield, f"expected a non-empty string, got {question!r:.60}")
    afield = next((f for f in ANSWER_FIELDS if f in row), None)
    if afield is None:
        raise DataError(path, i, "answer", f"missing (looked for {', '.join(ANSWER_FIELDS)})")
    raw_answer = row[afield]
    meta: dict[str, Any] = {"row": i}
    if isinstance(raw_answer, str) and "####" in raw_answer:  # gsm8k: solution #### final
        meta["solution"] = raw_answer
        raw_answer = raw_answer.rsplit("####", 1)[1]
    answers = as_answers(raw_answer, path=path, row=i, field=afield)
    id_field = next((f for f in ID_FIELDS if row.get(f) is not None), None)
    raw_id = row[id_field] if id_field else i
    skip = {qfield, afield} | ({"problem"} if qfield == "question" else set())
    meta.update({k: v for k, v in row.items() if k not in skip})
    return Example(
        id=f"{name}/{raw_id}",
        data_source=name,
        messages=build_messages(question, prompt),
        question=question,
        answers=answers,
        ability=ability,
        split="test",
        meta=meta,
    )
