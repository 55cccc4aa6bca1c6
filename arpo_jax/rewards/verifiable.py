"""Answer-checking rewards: ``math`` (equivalence), ``qa_em``, ``qa_f1`` and ``format``.

Each sees the whole trajectory text, extracts the final answer (``extract_final_answer``:
last ``\\boxed{}`` of the ``<answer>`` block) and compares it with the references using the
evaluation's scoring (``scoring``: Unicode-aware EM / F1 with no free points for empty answers,
references reduced to their own ``\\boxed{}``, truncated references matched verbatim). The format
check of the release is always evaluated and logged; it changes the score only through
``RewardConfig.require_format`` (ill-formed -> ``format_penalty``) and
``RewardConfig.format_weight`` (added when well formed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from .format import count_tools, validate_format
from .scoring import eval_em_score, eval_f1_score, math_matches
from .text import extract_final_answer
from .types import RewardConfig, RewardResult


@dataclasses.dataclass(frozen=True)
class _Score:
    score: float
    correct: bool
    f1: float | None = None
    em: float | None = None


Scorer = Callable[[str, Sequence[str], RewardConfig], _Score]


def _checked(
    name: str, scorer: Scorer, text: str, answers: Sequence[str], config: RewardConfig
) -> RewardResult:
    tools = count_tools(text)
    ok, reason = validate_format(text)

    def result(score: float, why: str, answer: str | None = None, s: _Score | None = None) -> RewardResult:
        return RewardResult(
            score=score,
            name=name,
            format_ok=ok,
            reason=why,
            answer=answer,
            correct=s.correct if s else None,
            f1=s.f1 if s else None,
            em=s.em if s else None,
            n_search=tools.search,
            n_python=tools.python,
        )

    if config.require_format and not ok:
        return result(config.format_penalty, f"bad format: {reason}")
    if config.eos_token and text.endswith(config.eos_token):
        text = text[: -len(config.eos_token)]
    bonus = config.format_weight * ok
    answer = extract_final_answer(text)
    if answer is None:
        return result(bonus, "no final answer")
    scored = scorer(answer, answers, config)
    return result(scored.score + bonus, "scored" if ok else f"scored; bad format: {reason}", answer, scored)


def _math(answer: str, answers: Sequence[str], config: RewardConfig) -> _Score:
    correct = any(math_matches(answer, ref, config.math_timeout_s) for ref in answers)
    return _Score(float(correct), correct)


def _em(answer: str, answers: Sequence[str], config: RewardConfig) -> _Score:
    em = eval_em_score(answer, answers)
    return _Score(em, em == 1.0, f1=eval_f1_score(answer, answers), em=em)


def _f1(answer: str, answers: Sequence[str], config: RewardConfig) -> _Score:
    f1, em = eval_f1_score(answer, answers), eval_em_score(answer, answers)
    return _Score(f1, em == 1.0, f1=f1, em=em)


def math_reward(text: str, answers: Sequence[str], config: RewardConfig | None = None) -> RewardResult:
    """1.0 when the final answer is mathematically equal to a reference, else 0.0."""
    return _checked("math", _math, text, answers, config or RewardConfig())


def qa_em_reward(text: str, answers: Sequence[str], config: RewardConfig | None = None) -> RewardResult:
    """1.0 when the final answer equals a reference in the evaluation's form (``eval_em_score``)."""
    return _checked("qa_em", _em, text, answers, config or RewardConfig())


def qa_f1_reward(text: str, answers: Sequence[str], config: RewardConfig | None = None) -> RewardResult:
    """Best token F1 of the final answer over the references (``eval_f1_score``)."""
    return _checked("qa_f1", _f1, text, answers, config or RewardConfig())


def format_reward(text: str, answers: Sequence[str], config: RewardConfig | None = None) -> RewardResult:
    """1.0 when the trajectory passes the release's format check, else 0.0 (answers unused)."""
    tools = count_tools(text)
    ok, reason = validate_format(text)
    return RewardResult(
        score=float(ok),
        name="format",
        format_ok=ok,
        reason=reason,
        n_search=tools.search,
        n_python=tools.python,
    )
