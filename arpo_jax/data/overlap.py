"""Train/test overlap: find questions of a training set that also occur in evaluation sets.

Questions are compared after a light normalisation (Unicode NFKC, lower case, control bytes
and LaTeX ``$`` delimiters dropped, whitespace collapsed), so formatting differences between
the released files do not hide a duplicate. Removal drops the training copies.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Mapping, Sequence

from .records import Example

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    """The key two questions must share to count as the same question."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text).replace("$", " ").lower()
    return _SPACE.sub(" ", text).strip()


@dataclasses.dataclass(frozen=True)
class Overlap:
    """One training example whose question also occurs in an evaluation set."""

    train_id: str
    eval_set: str
    eval_id: str
    question: str


def find_overlap(train: Sequence[Example], evals: Mapping[str, Sequence[Example]]) -> list[Overlap]:
    """Every (training example, evaluation example) pair with the same normalised question."""
    index: dict[str, list[tuple[str, str]]] = {}
    for name, examples in evals.items():
        for ex in examples:
            index.setdefault(normalize_question(ex.question), []).append((name, ex.id))
    found = []
    for ex in train:
        for name, eval_id in index.get(normalize_question(ex.question), ()):
            found.append(Overlap(ex.id, name, eval_id, ex.question))
    return found


def overlap_counts(train: Sequence[Example], evals: Mapping[str, Sequence[Example]]) -> dict[str, int]:
    """Per evaluation set: how many of its examples also occur in ``train`` (0 included)."""
    found = find_overlap(train, evals)
    return {name: len({o.eval_id for o in found if o.eval_set == name}) for name in evals}


def drop_overlap(
    train: Sequence[Example], evals: Mapping[str, Sequence[Example]]
) -> tuple[list[Example], list[Overlap]]:
    """Training examples with every question found in ``evals`` removed, and what was found."""
    found = find_overlap(train, evals)
    bad = {o.train_id for o in found}
    return [ex for ex in train if ex.id not in bad], found
