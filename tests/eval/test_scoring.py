"""Scoring one response: the configured reward plus EM / F1 / math equivalence."""

from __future__ import annotations

from arpo_jax.data.records import Example
from arpo_jax.eval.trajectories import score_text
from arpo_jax.rewards import RewardConfig


def ex(source, answers, ability=""):
    return Example(id=f"{source}/0", data_source=source, messages=[], question="q", answers=answers, ability=ability)


GOOD = "<think>t</think><answer>The answer is \\boxed{{{}}}</answer>"


def test_math_set_uses_equivalence():
    s = score_text(ex("math500", ["\\frac{1}{2}"]), GOOD.format("0.5"), RewardConfig())
    assert s.math_correct and s.correct and s.reward.name == "math" and s.em == 0.0
    s = score_text(ex("aime24", ["1"]), GOOD.format("-1"), RewardConfig(name="arpo_f1"))
    assert s.reward.score == 1.0 and not s.math_correct and not s.correct  # the release's F1 quirk


def test_qa_set_uses_exact_match_over_references():
    s = score_text(ex("hotpotqa", ["Paris", "City of Paris"], "qa"), GOOD.format("the city of Paris"), RewardConfig())
    assert s.em == 1.0 and s.f1 == 1.0 and s.correct and s.math_correct is None
    s = score_text(ex("hotpotqa", ["Paris"], "qa"), GOOD.format("Paris France"), RewardConfig(), correct_by="f1",
                   threshold=0.6)
    assert s.em == 0.0 and s.f1 is not None and 0.6 < s.f1 < 1.0 and s.correct


def test_no_answer_and_bad_format():
    s = score_text(ex("hotpotqa", ["Paris"], "qa"), "<think>t</think> no answer", RewardConfig())
    assert s.em == 0.0 and s.f1 == 0.0 and not s.correct and s.reward.answer is None
    # require_format changes the reward, not the answer metrics
    bad = "<think>t<answer>\\boxed{Paris}</answer>"
    s = score_text(ex("hotpotqa", ["Paris"], "qa"), bad, RewardConfig(require_format=True))
    assert s.reward.score == -1.0 and not s.reward.format_ok and s.em == 1.0 and s.correct
