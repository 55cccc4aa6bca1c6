"""Reader for the RL parquet files in the verl schema (as released by the ARPO authors).

Columns: ``data_source`` (str), ``prompt`` (list of ``{role, content}``), ``ability`` (str or
null), ``reward_model`` (``{ground_truth, style}``), ``extra_info`` (``{index, question, split,
need_tools_kwargs}``). Tolerated variants: a ``question`` column instead of ``prompt`` (the
ARPO system prompt is then added), nested fields stored as JSON strings, the answer in an
``answer`` / ``answers`` / ``golden_answers`` / ``ground_truth`` column, ground truths given
as lists or as ``{"target": [...]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .prompts import arpo_system_prompt, build_messages, fix_system_prompt, repair_latex_escapes
from .records import DataError, Example, as_answers, check_unique_ids, collect, maybe_json

_ANSWER_COLUMNS = ("answer", "answers", "golden_answers", "ground_truth")
_KNOWN_COLUMNS = {"data_source", "prompt", "question", "ability", "reward_model", "extra_info", "metadata"}
_ROLES = {"system", "user", "assistant"}


def read_rl_parquet(
    path: str | Path,
    *,
    byte_exact_prompt: bool = False,
    repair_escapes: bool = False,
    lenient: bool = False,
    errors: list[str] | None = None,
) -> list[Example]:
    """Reads one verl-style RL parquet file into ``Example`` records.

    Args:
        path: the ``.parquet`` file.
        byte_exact_prompt: keep the released ``\\x08oxed`` system prompt bytes (default: fix).
        repair_escapes: also fix ``\\x08oxed`` / ``\\x0crac`` inside the questions.
        lenient: skip bad rows (counted in a warning, messages appended to ``errors``)
            instead of raising ``DataError`` on the first one.
        errors: optional list that receives one message per skipped row.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:
        raise DataError(str(path), None, "<file>", f"cannot read parquet: {e}") from None

    def parse(i: int, row: dict[str, Any]) -> Example:
        return _parse_row(i, row, str(path), path.stem, byte_exact_prompt, repair_escapes)

    examples = collect(enumerate(rows), parse, path=str(path), lenient=lenient, errors=errors)
    check_unique_ids(examples, str(path))
    return examples


def _parse_row(i: int, row: dict[str, Any], path: str, stem: str, byte_exact: bool, repair: bool) -> Example:
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise DataError(path, i, "data_source", f"expected a non-empty string, got {data_source!r}")

    extra = maybe_json(row.get("extra_info"), path=path, row=i, field="extra_info")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise DataError(path, i, "extra_info", f"expected a mapping, got {type(extra).__name__}")

    if row.get("prompt") is not None:
        messages = _parse_prompt(row["prompt"], path, i)
        if not byte_exact:
            messages = [
                {**m, "content": fix_system_prompt(m["content"])} if m["role"] == "system" else m
                for m in messages
            ]
    elif isinstance(row.get("question"), str) and row["question"].strip():
        messages = build_messages(row["question"], arpo_system_prompt(byte_exact))
    else:
        raise DataError(path, i, "prompt", "missing (and no 'question' column either)")
    if repair:
        messages = [{**m, "content": repair_latex_escapes(m["content"])} for m in messages]

    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise DataError(path, i, "prompt", "no message with role 'user'")
    question = extra.get("question")
    if not isinstance(question, str) or not question.strip():
        question = users[-1]
    elif repair:
        question = repair_latex_escapes(question)

    answer_value, answer_field = _find_answer(row, path, i)
    answers = as_answers(answer_value, path=path, row=i, field=answer_field)

    ability = row.get("ability")
    if ability is not None and not isinstance(ability, str):
        raise DataError(path, i, "ability", f"expected a string, got {type(ability).__name__}")
    split = extra.get("split") if isinstance(extra.get("split"), str) else ""
    index = extra.get("index", i)
    meta: dict[str, Any] = {"file": stem, "row": i}
    meta.update({k: v for k, v in extra.items() if k not in ("index", "question", "split")})
    rm = row.get("reward_model")
    if isinstance(rm, dict) and rm.get("style") is not None:
        meta["reward_style"] = rm["style"]
    meta.update({k: v for k, v in row.items() if k not in _KNOWN_COLUMNS | set(_ANSWER_COLUMNS)})
    return Example(
        id=f"{stem}/{index}",
        data_source=data_source,
        messages=messages,
        question=question,
        answers=answers,
        ability=ability or "",
        split=split,
        meta=meta,
    )


def _parse_prompt(value: Any, path: str, i: int) -> list[dict[str, str]]:
    value = maybe_json(value, path=path, row=i, field="prompt")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(path, i, "prompt", f"expected a non-empty list of messages, got {value!r:.80}")
    messages = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(path, i, f"prompt[{j}]", f"expected a mapping, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise DataError(path, i, f"prompt[{j}].role", f"expected one of {sorted(_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(
                path, i, f"prompt[{j}].content", f"expected a string, got {type(content).__name__}"
            )
        messages.append({"role": role, "content": content})
    return messages


def _find_answer(row: dict[str, Any], path: str, i: int) -> tuple[Any, str]:
    rm = maybe_json(row.get("reward_model"), path=path, row=i, field="reward_model")
    if isinstance(rm, dict) and rm.get("ground_truth") is not None:
        return rm["ground_truth"], "reward_model.ground_truth"
    if rm is not None and not isinstance(rm, dict):
        raise DataError(path, i, "reward_model", f"expected a mapping, got {type(rm).__name__}")
    for col in _ANSWER_COLUMNS:
        if row.get(col) is not None:
            return row[col], col
    raise DataError(path, i, "reward_model.ground_truth", "missing (no answer column either)")
