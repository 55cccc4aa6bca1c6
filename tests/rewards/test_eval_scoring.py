"""The evaluation's EM / F1 (``rewards.scoring``): no free points, Unicode and CJK, gold quirks."""

from __future__ import annotations

import pytest

from arpo_jax.rewards import (
    eval_em_score,
    eval_f1_score,
    eval_tokens,
    gold_flags,
    math_matches,
    normalize_eval,
    qa_em_reward,
    qa_f1_reward,
    raw_form,
    unbox,
)
from arpo_jax.rewards.scoring import braces_balanced, token_f1

EMPTY_PREDICTIONS = ["", "the", "an", ".", "\\boxed{}"]
ARTICLE_GOLDS = ["A", "An", "The"]
# the same article as the gold ("the" vs "The") is a raw-form match: next test
EMPTY_PAIRS = [(p, g) for p in EMPTY_PREDICTIONS for g in ARTICLE_GOLDS if p != g.casefold()]


@pytest.mark.parametrize(("pred", "gold"), EMPTY_PAIRS)
def test_empty_or_other_article_predictions_score_zero(pred, gold):
    assert eval_em_score(pred, gold) == 0.0
    assert eval_f1_score(pred, gold) == 0.0
    assert eval_em_score(pred, [gold, "Paris"]) == 0.0


@pytest.mark.parametrize(("pred", "gold"), [("A", "A"), ("a", "A"), ("(A).", "A"), ("an", "An"), ("THE", "The")])
def test_article_gold_is_scored_on_its_raw_form(pred, gold):
    assert eval_em_score(pred, gold) == 1.0
    assert eval_f1_score(pred, gold) == 1.0


def test_raw_form_f1_is_partial_and_wrong_letters_score_zero():
    assert eval_em_score("B", "A") == 0.0 and eval_f1_score("B", "A") == 0.0
    assert eval_f1_score("A is right", "A") == pytest.approx(0.5)  # raw tokens: P 1/3, R 1
    assert raw_form("  (A). ") == "a" and raw_form("?!") == "?!" and raw_form("") == ""


def test_empty_prediction_never_matches_an_empty_normalising_one():
    assert normalize_eval("the") == "" and normalize_eval(".") == ""
    assert eval_em_score("the", ".") == 0.0  # raw forms differ: "the" vs "."
    assert eval_em_score("", "") == 0.0 and eval_f1_score("", "") == 0.0


def test_cjk_punctuation_and_characters():
    assert eval_em_score("北京。", "北京") == 1.0
    assert eval_em_score("“北京”，", ["上海", "北京"]) == 1.0
    # 北京大学 vs 北京: 2 of 4 predicted characters match (P 1/2), both gold ones (R 1): F1 2/3
    assert eval_f1_score("北京大学", "北京") == pytest.approx(2 / 3)
    assert eval_em_score("北京大学", "北京") == 0.0
    # 金牌39枚 vs 金牌40枚: tokens 金 牌 39 枚 / 金 牌 40 枚, 3 shared: P = R = 3/4
    assert eval_f1_score("金牌39枚", "金牌40枚") == pytest.approx(3 / 4)


def test_tokens_mix_words_and_cjk_characters():
    words = ["2024", "年", "10", "月", "beijing", "北", "京"]
    assert eval_tokens(normalize_eval("2024年10月 Beijing 北京")) == words
    assert eval_tokens("ひらがな ハングル한국") == list("ひらがなハングル한국")
    assert token_f1([], ["a"]) == 0.0 and token_f1(["a"], []) == 0.0


def test_full_width_and_unicode_punctuation():
    assert eval_em_score("ＡＢＣ", "abc") == 1.0
    assert normalize_eval("ＡＢＣ") == "abc"
    assert eval_em_score("Xi’an", "Xi'an") == 1.0  # U+2019 and ASCII apostrophe both dropped
    assert eval_em_score("Polish–Lithuanian", "Polish-Lithuanian") == 1.0
    assert eval_em_score("June\xa029, 2007", "June 29 2007") == 1.0  # NFKC: no-break space
    assert eval_em_score("«Paris»", "Paris") == 1.0
    assert normalize_eval("Straße") == "strasse"


def test_squad_behaviour_kept_for_latin_answers():
    assert normalize_eval("The Eiffel Tower!") == "eiffel tower"
    assert eval_f1_score("New York City", "New York") == pytest.approx(0.8)
    assert eval_f1_score("yes", "yes it is") == 0.0 and eval_f1_score("no", "No.") == 1.0
    assert eval_em_score("The Beatles", ["beatles"]) == 1.0 and eval_em_score("x", []) == 0.0


def test_gold_with_its_own_box_is_reduced_to_the_box():
    gold = "The final answer is \\(\\boxed{D}\\)."
    assert unbox(gold) == "D" and unbox("plain") == "plain"
    assert eval_em_score("D", gold) == 1.0 and eval_em_score("C", gold) == 0.0
    assert eval_em_score("\\boxed{D}", "D") == 1.0  # the prediction is unboxed too
    assert math_matches("D", gold)
    assert gold_flags([gold]) == ("boxed_gold",)
    assert gold_flags(["\\boxed{}"]) == ("boxed_gold", "empty_gold")


TRUNCATED = ["1}^N", "36\\}", "-5\\right\\}", "L(\\vec{R},z)\\equiv\\intop_{1BZ}\\frac{d^{2}k"]  # released golds


@pytest.mark.parametrize("gold", TRUNCATED)
def test_truncated_golds_are_flagged(gold):
    assert not braces_balanced(gold)
    assert gold_flags(gold) == ("unbalanced_braces",)


def test_balanced_braces():
    assert braces_balanced("\\frac{1}{2}") and braces_balanced("\\left\\{1, 2\\right\\}")
    assert braces_balanced("a \\\\{b}")  # "\\\\" is a line break, the brace after it groups
    assert not braces_balanced("}{") and not braces_balanced("\\}\\{")


def test_truncated_gold_matches_math_only_verbatim():
    # math-verify reads "1}^N" as 1 and "36\}" as 36: those would be free points
    assert not math_matches("1", "1}^N") and not math_matches("36", "36\\}")
    assert math_matches("1}^N", "1}^N") and math_matches(" 1}^ N ", "1}^N")
    assert not math_matches("", "1}^N")


def test_flags_of_plain_and_article_golds():
    assert gold_flags(["Paris", "City of Paris"]) == ()
    assert gold_flags(["A"]) == ("raw_form",) and gold_flags("The") == ("raw_form",)


def test_qa_rewards_use_the_evaluation_scoring():
    box = "<think>t</think><answer>\\boxed{%s}</answer>"
    assert qa_em_reward(box % "", ["A"]).score == 0.0
    assert qa_f1_reward(box % "", ["A"]).score == 0.0
    r = qa_f1_reward(box % "A", ["A"])
    assert (r.score, r.em, r.correct) == (1.0, 1.0, True)
    assert qa_em_reward(box % "北京。", ["北京"]).score == 1.0
    assert qa_f1_reward(box % "北京大学", ["北京"]).score == pytest.approx(2 / 3)
