"""Math equivalence: real equality of answers, bounded time on the main and other threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from arpo_jax.rewards import RewardConfig, math_equal, math_equiv, math_reward


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac12", "1/2"),
        ("-6+3\\sqrt{3}", "3\\sqrt{3} - 6"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("204.0", "204"),
        ("-q+p", "p - q"),
        ("$\\frac{14}{3}$", "\\frac{14}{3}"),
        ("70", "70"),
        ("18.90", "\\$18.90"),
        ("32348", "\\$32,\\!348"),
    ],
)
def test_equal(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("-1", "1"), ("1", "-1"), ("\\frac{1}{3}", "0.5"), ("x+1", "x-1"), ("", "1"), ("2", "")],
)
def test_not_equal(pred, gold):
    assert not math_equal(pred, gold)


def test_adversarial_inputs_finish_quickly():
    for pred in ["9^{9^{9^{9^{9}}}}", "(10^{100000000})!", "(" * 300 + "1" + ")" * 300]:
        start = time.monotonic()
        assert not math_equal(pred, "1", timeout_s=1)
        assert time.monotonic() - start < 6, pred
    start = time.monotonic()
    assert not math_equal("x" * 5000, "1")  # over MAX_ANSWER_CHARS: not parsed at all
    assert time.monotonic() - start < 0.5


def test_off_main_thread_uses_a_helper_process():
    results: dict[str, bool] = {}

    def run() -> None:
        results["half"] = math_equal("0.5", "\\frac{1}{2}")
        results["sign"] = math_equal("-1", "1")

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=90)
    assert results == {"half": True, "sign": False}


def test_the_main_thread_uses_the_helper_process_too(monkeypatch):
    """In a JAX process a SIGALRM landing in JAX's gc callback is swallowed (the timeout is
    lost), so no check relies on signals in this process: the main thread also goes through
    the helper, which is killed when it overruns."""
    calls = []

    class Recording(math_equiv._Worker):
        def check(self, pred, gold, timeout_s):
            calls.append((pred, gold, timeout_s))
            return super().check(pred, gold, timeout_s)

    monkeypatch.setattr(math_equiv, "_WORKER", Recording())
    assert threading.current_thread() is threading.main_thread()
    assert math_equal("0.5", "\\frac{1}{2}", timeout_s=2) and not math_equal("-1", "1")
    assert calls == [("0.5", "\\frac{1}{2}", 2), ("-1", "1", 5)]
    math_equiv._WORKER._kill()


def test_a_stuck_helper_is_killed(monkeypatch):
    class Sleeper(math_equiv._Worker):
        def _start(self) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )

    monkeypatch.setattr(math_equiv, "STARTUP_ALLOWANCE_S", 0)
    w = Sleeper()
    start = time.monotonic()
    assert w.check("1", "2", 1) is False
    assert time.monotonic() - start < 10 and w.proc is None


def test_math_reward_uses_the_boxed_answer():
    text = "<think> a </think><answer> so \\[ \\boxed{0.5} \\] </answer>"
    r = math_reward(text, ["\\frac{1}{2}"])
    assert (r.score, r.correct, r.answer, r.format_ok, r.name) == (1.0, True, "0.5", True, "math")
    wrong = math_reward(text.replace("0.5", "-0.5"), ["0.5"])
    assert (wrong.score, wrong.correct) == (0.0, False)
    assert math_reward("<think> a </think> no answer", ["1"]).score == 0.0


def test_format_options():
    ill = "\\boxed{2}"  # right answer, no think / answer tags
    assert math_reward(ill, ["2"]).score == 1.0
    strict = RewardConfig(require_format=True)
    assert math_reward(ill, ["2"], strict).score == -1.0
    good = "<think> a </think><answer>\\boxed{2}</answer>"
    assert math_reward(good, ["2"], RewardConfig(format_weight=0.2)).score == pytest.approx(1.2)
    assert math_reward(good, ["3"], RewardConfig(format_weight=0.2)).score == pytest.approx(0.2)
