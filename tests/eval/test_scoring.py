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


def test_empty_answer_gets_no_free_point_on_an_article_gold():
    # HLE: gold "A"; SQuAD normalises it to "" so an empty \boxed{} used to be an exact match
    for text in (GOOD.format(""), GOOD.format("the"), "<think>t</think><answer>.</answer>"):
        s = score_text(ex("hle", ["A"], "qa"), text, RewardConfig())
        assert s.em == 0.0 and s.f1 == 0.0 and not s.correct and s.gold_flags == ("raw_form",)
    s = score_text(ex("hle", ["A"], "qa"), GOOD.format("A"), RewardConfig())
    assert s.em == 1.0 and s.f1 == 1.0 and s.correct
    s = score_text(ex("hle", ["A"], "qa"), GOOD.format("A"), RewardConfig(name="arpo_f1"), correct_by="reward")
    assert s.reward.score == 0.0 and not s.correct and s.em == 1.0  # the release's reward scores it 0


def test_cjk_answers():
    s = score_text(ex("xbench", ["北京"], "qa"), GOOD.format("北京。"), RewardConfig())
    assert s.em == 1.0 and s.correct and s.gold_flags == ()
    s = score_text(ex("webwalker", ["北京"], "qa"), GOOD.format("北京大学"), RewardConfig())
    assert s.em == 0.0 and abs(s.f1 - 2 / 3) < 1e-9 and not s.correct


def test_gold_quirks_on_math_sets():
    s = score_text(ex("math", ["1}^N"], "math"), GOOD.format("1"), RewardConfig())
    assert not s.math_correct and not s.correct and s.gold_flags == ("unbalanced_braces",)
    s = score_text(ex("math", ["The final answer is \\(\\boxed{D}\\)."], "math"), GOOD.format("D"), RewardConfig())
    assert s.math_correct and s.em == 1.0 and s.gold_flags == ("boxed_gold",)


def test_flags_reach_the_record_and_the_report():
    from types import SimpleNamespace

    from arpo_jax.eval.metrics import aggregate, build_report, markdown_report
    from arpo_jax.eval.trajectories import sample_result

    traj = SimpleNamespace(tool_calls=[], tokens=[1, 2], mask=[1, 1], finish_reason="eos")
    samples = []
    for qid, answers in (("q0", ["A"]), ("q1", ["Paris"]), ("q2", ["The"])):
        e = Example(id=qid, data_source="hle", messages=[], question="q", answers=answers, ability="qa")
        for i in range(2):
            scored = score_text(e, GOOD.format(""), RewardConfig())
            samples.append(sample_result(e, traj, scored, seed=0, sample=i))
    assert samples[0].to_dict()["gold_flags"] == ["raw_form"] and samples[2].gold_flags == ()  # q1: Paris
    assert aggregate(samples)["gold_flags"] == {"raw_form": 2}  # questions, not samples
    assert aggregate(samples)["em"] == 0.0
    assert "golds of hle: 2 raw_form" in markdown_report(build_report(samples))
