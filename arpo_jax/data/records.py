"""The record every reader produces: one prompt with its reference answers.

Training (the RL parquet files) and evaluation (the benchmark JSONL files) both yield
``Example`` objects, so the rollout, the rewards and the evaluation code consume one type.
Readers report a bad row as a ``DataError`` whose one-line message names the file, the row
(0-based) and the field; with ``lenient=True`` they skip it instead and count it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

Message = dict[str, str]


class DataError(ValueError):
    """A row of a data file is malformed; the message names file, row and field.

    ``row`` is 0-based: the row of a parquet file or the line of a JSONL file.
    """

    def __init__(self, path: str, row: int | None, field: str, problem: str):
        self.path, self.row, self.field, self.problem = str(path), row, field, problem
        where = f"{self.path}:{row}" if row is not None else self.path
        super().__init__(f"{where}: field '{field}': {problem}")


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt of a training or evaluation set.

    Attributes:
        id: unique within its file, e.g. ``"train_10k/17"`` or ``"aime24/60"``.
        data_source: the file's ``data_source`` (``"DR_grpo_mix"``) or the benchmark name.
        messages: the chat to render, ``[{"role": ..., "content": ...}, ...]``.
        question: the bare question (the user message without the system prompt).
        answers: reference answers, at least one; rewards take the best over the list.
        ability: ``"math"``, ``"qa"`` or ``""`` when the file does not say.
        split: ``"train"``, ``"valid"``, ``"test"``...
        meta: everything else the row carried (JSON-serialisable).
    """

    id: str
    data_source: str
    messages: list[Message]
    question: str
    answers: list[str]
    ability: str = ""
    split: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict copy (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Inverse of ``to_dict``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Example.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)


def as_answers(value: Any, *, path: str, row: int, field: str) -> list[str]:
    """Normalises a reference answer (string, number, list, ``{"target": ...}``) to a list.

    A string is one answer even when it looks like a list (``"[0, 1]"`` is an interval).
    """
    if isinstance(value, dict) and "target" in value:
        value = value["target"]
    if hasattr(value, "tolist"):  # numpy arrays coming from pandas
        value = value.tolist()
    if isinstance(value, bool) or value is None:
        raise DataError(path, row, field, f"expected a string or a list of strings, got {value!r}")
    if isinstance(value, (int, float)):
        value = [str(value)]
    elif isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(path, row, field, f"expected a string or a list, got {type(value).__name__}")
    answers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise DataError(path, row, field, f"answer {item!r} is not a string or a number")
        answers.append(str(item).strip())
    answers = [a for a in answers if a]
    if not answers:
        raise DataError(path, row, field, "empty answer")
    return answers


def maybe_json(value: Any, *, path: str, row: int, field: str) -> Any:
    """Decodes a nested field stored as a JSON string; other values pass through."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in ("{", "["):
            try:
                return json.loads(s)
            except json.JSONDecodeError as e:
                raise DataError(path, row, field, f"invalid JSON ({e.msg} at char {e.pos})") from None
    return value


def collect(
    rows: Iterable[tuple[int, Any]],
    parse: Callable[[int, Any], Example],
    *,
    path: str,
    lenient: bool,
    errors: list[str] | None,
) -> list[Example]:
    """Runs ``parse(row_index, row)`` over rows; raises on the first bad row or skips and counts."""
    out: list[Example] = []
    bad: list[str] = []
    for i, row in rows:
        try:
            out.append(parse(i, row))
        except DataError as e:
            if not lenient:
                raise DataError(
                    e.path, e.row, e.field, f"{e.problem} (lenient=True skips bad rows)"
                ) from None
            bad.append(str(e))
    if bad:
        logger.warning("%s: skipped %d bad row(s); first: %s", path, len(bad), bad[0])
        if errors is not None:
            errors.extend(bad)
    return out


def check_unique_ids(examples: Sequence[Example], path: str) -> None:
    """Raises when two examples of one file share an id."""
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise DataError(path, None, "id", f"duplicate id {ex.id!r} (examples {seen[ex.id]} and {i})")
        seen[ex.id] = i


class BadJson:
    """A row of a JSON Lines file that is not valid JSON (kept by ``read_json_rows(lenient=True)``)."""

    def __init__(self, problem: str):
        self.problem = problem


def read_json_rows(path, lenient: bool = False) -> list[tuple[int, Any]]:
    """(line index, parsed row) of a JSON array file or a JSON Lines file (blank lines skipped).

    An unreadable file or an invalid array raises ``DataError``; an invalid line raises too,
    unless ``lenient``, where it is returned as a ``BadJson`` row for the caller to report.
    """
    from pathlib import Path

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(str(path), None, "<file>", f"cannot read: {e}") from None
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text)))
        except json.JSONDecodeError as e:
            raise DataError(str(path), None, "<json>", f"invalid JSON array ({e.msg} at char {e.pos})") from None
    rows: list[tuple[int, Any]] = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                problem = f"invalid JSON ({e.msg} at char {e.pos})"
                if not lenient:
                    raise DataError(str(path), i, "<json>", problem) from None
                rows.append((i, BadJson(problem)))
    return rows
