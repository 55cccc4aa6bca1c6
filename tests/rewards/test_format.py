"""The release's format check, rule by rule, and tool counts."""

from __future__ import annotations

import pytest

from arpo_jax.rewards import count_tools, validate_format

GOOD = (
    "<think> plan </think>\n<search> capital of France </search> <result>\nParis\n</result>"
    "<think> check </think><python>print(2)</python> <result>\n2\n</result>"
    "<think> done </think>\n<answer> The final answer is \\[ \\boxed{Paris} \\] </answer><|im_end|>"
)


def test_good_trajectory():
    assert validate_format(GOOD) == (True, "format is correct")
    counts = count_tools(GOOD)
    assert (counts.search, counts.python, counts.both_tools_used) == (1, 1, True)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think> a <answer>\\boxed{1}</answer>", "<think> </think> not paired"),
        ("<answer>\\boxed{1}</answer>", "<think> or </think> not found"),
        ("<think>a</think> no answer", "<answer> or </answer> not found"),
        (
            "<think>a</think><answer>\\boxed{1}</answer><answer>\\boxed{1}</answer>",
            "<answer> or </answer> not found",
        ),
        (
            "<think>a</think><search> q </search><answer>\\boxed{1}</answer>",
            "search/result tags are incomplete",
        ),
        (
            "<think>a</think><search> q <result>r</result></search><answer>\\boxed{1}</answer>",
            "search/result tags are nested in the wrong order",
        ),
        (
            "<think>a</think><python> x </python> <answer>\\boxed{1}</answer>",
            "python/result tags are incomplete",
        ),
        (
            "<think>a</think><search>q</search><result>r</result><search>q2</search><answer>\\boxed{1}</answer>",
            "search/result tags are incomplete",
        ),
        ("<think>a</think></answer> \\boxed{1} <answer>", "<answer> must be before </answer>"),
        ("<think>a</think><answer> 42 </answer>", "answer is missing \\boxed{} format"),
        ("<think>a</think><answer> \\boxed 42 </answer>", "answer is missing \\boxed{} format"),
    ],
)
def test_each_rule(text, reason):
    assert validate_format(text) == (False, reason)


def test_think_pairs_are_counted_not_nested():
    # the release only compares counts: "</think> ... <think>" passes
    assert validate_format("</think> x <think><answer>\\boxed{1}</answer>")[0] is True


def test_counts_without_closing_tags():
    counts = count_tools("<search> a <search> b </search>")
    assert (counts.search, counts.python, counts.closed_search, counts.closed_python) == (2, 0, True, False)
    assert counts.both_tools_used is False
