"""Reward selection per data_source / ability / config, registry, QA rewards, logging parts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from arpo_jax.data import Example
from arpo_jax.rewards import (
    RewardConfig,
    RewardResult,
    get_reward_fn,
    qa_em_reward,
    qa_f1_reward,
    register_reward,
    reward_for,
    reward_names,
    select_reward_name,
)


def ex(source: str, ability: str, answers: list[str]) -> Example:
    return Example(id="x/0", data_source=source, messages=[], question="q", answers=answers, ability=ability)


MATH = ex("DR_grpo_mix", "math", ["\\frac{1}{2}"])
QA = ex("DR_grpo_mix", "qa", ["New York"])
AIME = ex("aime24", "", ["204"])
DEEP = ex("DR_simpledeepsearch0.8k", "", ["E. H. Shepard"])


def answer(x: str) -> str:
    return f"<think> t </think><answer> \\boxed{{{x}}} </answer>"


def test_default_selection():
    cfg = RewardConfig()
    assert [select_reward_name(e, cfg) for e in (MATH, QA, AIME, DEEP)] == ["math", "qa_f1", "math", "qa_f1"]


def test_forced_and_per_source_selection():
    assert select_reward_name(MATH, RewardConfig(name="arpo_f1")) == "arpo_f1"
    cfg = RewardConfig(by_source={"aime24": "qa_em"}, qa_reward="qa_em")
    assert [select_reward_name(e, cfg) for e in (MATH, QA, AIME)] == ["math", "qa_em", "qa_em"]


def test_reward_for_scores_with_the_selected_reward():
    assert reward_for(MATH, answer("0.5")).score == 1.0  # math equivalence
    assert reward_for(MATH, answer("0.5"), RewardConfig(name="arpo_f1")).score == 0.0  # token F1
    r = reward_for(QA, answer("New York City"))
    assert r.name == "qa_f1" and r.score == pytest.approx(0.8) and r.em == 0.0


def test_qa_rewards_over_references():
    refs = ["New York City", "NYC"]
    assert qa_em_reward(answer("nyc"), refs).score == 1.0
    assert qa_em_reward(answer("New York"), refs).score == 0.0
    assert qa_f1_reward(answer("New York"), refs).score == pytest.approx(0.8)
    assert qa_f1_reward("<answer>The Big Apple</answer>", ["big apple"]).score == 1.0  # no box: block text


def test_registry():
    assert reward_names() == ["arpo_f1", "format", "math", "qa_em", "qa_f1"]
    with pytest.raises(KeyError, match="unknown reward 'nope'; known: arpo_f1, format"):
        get_reward_fn("nope")
    assert get_reward_fn("format")(answer("1"), [], RewardConfig()).score == 1.0
    assert get_reward_fn("format")("no tags", [], RewardConfig()).score == 0.0

    def length_reward(text: str, answers, config) -> RewardResult:
        return RewardResult(score=float(len(text)), name="length", format_ok=True)

    register_reward("test_length", length_reward)
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_length", length_reward)
    assert reward_for(QA, "abc", RewardConfig(name="test_length")).score == 3.0


def test_metrics_for_logging():
    text = "<think> a </think><search> q </search><result>r</result><answer> \\boxed{New York} </answer>"
    r = reward_for(QA, text)
    assert r.metrics() == {
        "score": 1.0,
        "format_ok": 1.0,
        "n_search": 1.0,
        "n_python": 0.0,
        "f1": 1.0,
        "em": 1.0,
        "correct": 1.0,
    }


def test_rewards_import_neither_jax_nor_tensorflow():
    code = "import sys, arpo_jax.rewards\nprint('jax' in sys.modules, 'tensorflow' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
