"""Reward results and the reward configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """A reward and the parts it was made of (for logging).

    Attributes:
        score: the scalar reward used for training.
        name: the reward function that produced it.
        format_ok: whether the trajectory passed the release's format check.
        reason: a short human-readable explanation.
        answer: the extracted final answer (None when none could be extracted).
        correct: math equivalence / exact match verdict when the reward computes one.
        f1: token F1 against the best reference, when computed.
        em: exact match (0/1) against any reference, when computed.
        n_search: ``<search>`` calls in the trajectory.
        n_python: ``<python>`` calls in the trajectory.
    """

    score: float
    name: str
    format_ok: bool
    reason: str = ""
    answer: str | None = None
    correct: bool | None = None
    f1: float | None = None
    em: float | None = None
    n_search: int = 0
    n_python: int = 0

    def metrics(self) -> dict[str, float]:
        """Numeric components for a metrics logger (None fields left out)."""
        out = {
            "score": float(self.score),
            "format_ok": float(self.format_ok),
            "n_search": float(self.n_search),
            "n_python": float(self.n_python),
        }
        for key in ("f1", "em"):
            if getattr(self, key) is not None:
                out[key] = float(getattr(self, key))
        if self.correct is not None:
            out["correct"] = float(self.correct)
        return out


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Which reward to use and its options.

    Attributes:
        name: force this reward for every example (e.g. ``"arpo_f1"`` for the faithful
            reproduction); None selects per example.
        by_source: ``data_source`` -> reward name, checked before the defaults below.
        math_reward: reward for math examples (``ability == "math"`` or a math benchmark).
        qa_reward: reward for every other example.
        require_format: math/qa rewards return ``format_penalty`` for a trajectory failing the
            release's format check (``arpo_f1`` always does).
        format_penalty: the score of an ill-formed trajectory when ``require_format``.
        format_weight: added to math/qa scores when the format check passes (0 = off).
        eos_token: stripped from the end of the trajectory before answer extraction.
        math_timeout_s: time limit of one math equivalence check.
    """

    name: str | None = None
    by_source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    math_reward: str = "math"
    qa_reward: str = "qa_f1"
    require_format: bool = False
    format_penalty: float = -1.0
    format_weight: float = 0.0
    eos_token: str | None = None
    math_timeout_s: float = 5.0


class RewardFn(Protocol):
    """A reward: the whole trajectory text (after the prompt) and the reference answers."""

    def __call__(self, text: str, answers: Sequence[str], config: RewardConfig) -> RewardResult: ...
