"""SQuAD normalisation, F1/EM over references, \\boxed extraction."""

from __future__ import annotations

import pytest

from arpo_jax.rewards import (
    extract_final_answer,
    last_boxed,
    normalize_answer,
    qa_em_score,
    qa_f1_score,
    release_boxed_answer,
)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an  apple,  a pear ", "apple pear"),
        ("-1", "1"),
        ("\\frac{1}{2}", "frac12"),
        ("1/2", "12"),
        ("São Paulo", "são paulo"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_f1_hand_values():
    assert qa_f1_score("New York City", "New York") == pytest.approx(0.8)  # P 2/3, R 1
    assert qa_f1_score("York", ["New York", "NYC"]) == pytest.approx(2 / 3)  # best of the list
    assert qa_f1_score("Paris", ["London", "Rome"]) == 0.0
    assert qa_f1_score("the the", "the") == 0.0  # both normalise to ""
    assert qa_f1_score("-1", "1") == 1.0  # SQuAD drops the minus sign


def test_yes_no_rule():
    assert qa_f1_score("yes", "yes it is") == 0.0
    assert qa_f1_score("no", "No.") == 1.0
    assert qa_f1_score("yes indeed", "yes") == 0.0


def test_exact_match():
    assert qa_em_score("The Beatles", ["beatles"]) == 1.0
    assert qa_em_score("Beatles band", ["beatles"]) == 0.0
    assert qa_em_score("x", []) == 0.0


def test_release_boxed_answer_quirks():
    assert release_boxed_answer(" The answer is \\[ \\boxed{\\frac{1}{2}} \\] ") == "\\frac{1}{2}"
    assert release_boxed_answer("\\boxed{1} then \\boxed{2}") == "2"
    # "\boxed " (with a space) anywhere wins: text after its last occurrence up to "$"
    assert release_boxed_answer("\\boxed{7} and $\\boxed 5$ end") == "5"
    with pytest.raises(ValueError, match="unbalanced"):
        release_boxed_answer("\\boxed{1")
    with pytest.raises(ValueError, match="not a"):
        release_boxed_answer("\\boxed{1} \\boxedx{2}")
    with pytest.raises(ValueError, match="not a"):
        release_boxed_answer("\\fbox{3}")
    with pytest.raises(ValueError, match="no \\\\boxed"):
        release_boxed_answer("plain")


def test_last_boxed_and_final_answer():
    assert last_boxed("a \\boxed{x^{2}} b \\boxed{ 3 }") == "3"
    assert last_boxed("\\boxed{1} \\boxed{2") == "1"  # unbalanced last box skipped
    assert last_boxed("no box") is None
    text = "<think>\\boxed{9}</think><answer>so \\boxed{\\frac{1}{2}}</answer>"
    assert extract_final_answer(text) == "\\frac{1}{2}"
    assert extract_final_answer("<answer> Paris </answer>") == "Paris"
    assert extract_final_answer("thinking... \\boxed{4}") == "4"
    assert extract_final_answer("nothing here") is None
