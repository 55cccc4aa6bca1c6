"""The release's reward (arpo_f1), with its quirks, against hand-computed expectations."""

from __future__ import annotations

import pytest

from arpo_jax.rewards import RewardConfig, arpo_f1_reward, qa_em_score, qa_f1_score

SEARCH = "<search> q </search> <result>\nsnippet\n</result>"
PYTHON = "<python>print(1)</python> <result>\n1\n</result>"


def traj(answer: str, *tools: str, box: str = "\\boxed{%s}") -> str:
    body = "".join(f"<think> step </think>{t}" for t in tools)
    return f"{body}<think> done </think><answer> The final answer is \\[ {box % answer} \\] </answer>"


def test_correct_answer_scores_f1():
    r = arpo_f1_reward(traj("Paris"), ["Paris"])
    assert (r.score, r.f1, r.format_ok, r.answer, r.name) == (1.0, 1.0, True, "Paris", "arpo_f1")


def test_both_tools_add_bonus_only_when_f1_positive():
    assert arpo_f1_reward(traj("Paris", SEARCH, PYTHON), ["Paris"]).score == pytest.approx(1.1)
    assert arpo_f1_reward(traj("Paris", SEARCH), ["Paris"]).score == 1.0
    assert arpo_f1_reward(traj("Paris", PYTHON), ["Paris"]).score == 1.0
    wrong = arpo_f1_reward(traj("Rome", SEARCH, PYTHON), ["Paris"])
    assert (wrong.score, wrong.f1, wrong.n_search, wrong.n_python) == (0.0, 0.0, 1, 1)


def test_partial_f1():
    # "New York City" vs "New York": precision 2/3, recall 1 -> 0.8; +0.1 with both tools
    assert arpo_f1_reward(traj("New York City"), ["New York"]).score == pytest.approx(0.8)
    assert arpo_f1_reward(traj("New York City", SEARCH, PYTHON), ["New York"]).score == pytest.approx(0.9)


def test_math_quirks_of_token_f1():
    # SQuAD normalisation strips punctuation, so -1 and 1 are the same token...
    assert arpo_f1_reward(traj("-1"), ["1"]).score == 1.0
    # ...and \frac{1}{2} ("frac12") shares no token with 1/2 ("12") or 0.5 ("05").
    assert arpo_f1_reward(traj("\\frac{1}{2}"), ["1/2"]).score == 0.0
    assert arpo_f1_reward(traj("\\frac{1}{2}"), ["0.5"]).score == 0.0
    assert arpo_f1_reward(traj("\\frac{1}{2}"), ["\\dfrac{1}{2}"]).score == 0.0  # "frac12" vs "dfrac12"


@pytest.mark.parametrize(
    "text",
    [
        "<answer>\\boxed{Paris}</answer>",  # no think
        "<think> x </think><answer> Paris </answer>",  # no \boxed
        "<think> x </think><search> q </search><answer>\\boxed{Paris}</answer>",  # tool call without result
        "<think> x </think><answer>\\boxed{Paris}</answer> <answer>\\boxed{Paris}</answer>",
    ],
)
def test_bad_format_scores_minus_one(text):
    r = arpo_f1_reward(text, ["Paris"])
    assert (r.score, r.format_ok) == (-1.0, False) and r.reason.startswith("bad format")


def test_box_extraction_failures_score_minus_one():
    unbalanced = "<think> x </think><answer> \\boxed{Paris} \\boxed{Par </answer>"
    r = arpo_f1_reward(unbalanced, ["Paris"])
    assert (r.score, r.format_ok) == (-1.0, True) and r.reason.startswith("find box error")


def test_boxed_with_space_quirk():
    # any "\boxed " in the answer block: the text after its last occurrence up to "$"
    text = "<think> x </think><answer> \\boxed{Rome} or $\\boxed Paris$ </answer>"
    assert arpo_f1_reward(text, ["Paris"]).score == 1.0


def test_list_of_references_takes_the_best():
    assert arpo_f1_reward(traj("NYC"), ["New York City", "NYC"]).score == 1.0


def test_eos_is_stripped_after_the_format_check():
    text = traj("Paris") + "<|im_end|>"
    assert arpo_f1_reward(text, ["Paris"], RewardConfig(eos_token="<|im_end|>")).score == 1.0
    assert arpo_f1_reward(text, ["Paris"]).score == 1.0  # the answer regex ignores the suffix


def test_tool_result_text_is_part_of_the_trajectory():
    # a <search> inside the tool result counts: the release scans the whole response text
    weird = "<think> x </think><python>p</python> <result>\n<search>\n</result><answer>\\boxed{1}</answer>"
    assert arpo_f1_reward(weird, ["1"]).score == -1.0


def test_article_only_gold_scores_zero_as_released():
    # SQuAD normalisation turns the gold "A" into "": the release's F1 scores "A" vs "A" as 0
    r = arpo_f1_reward(traj("A"), ["A"])
    assert (r.score, r.f1, r.reason) == (0.0, 0.0, "wrong answer but good format")
    assert arpo_f1_reward(traj(""), ["A"]).score == 0.0  # and an empty box scores 0 too
    assert qa_f1_score("A", "A") == 0.0 and qa_em_score("", "A") == 1.0  # the release helpers, unchanged


def test_cjk_is_scored_as_released():
    # ASCII punctuation only and whitespace tokens: "北京。" is one token, not "北京"
    assert arpo_f1_reward(traj("北京。"), ["北京"]).score == 0.0
    assert arpo_f1_reward(traj("北京大学"), ["北京"]).score == 0.0
