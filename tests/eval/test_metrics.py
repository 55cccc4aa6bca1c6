"""pass@k against a brute-force reference, aggregation, Markdown and JSON output."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from arpo_jax.eval.metrics import (
    SampleResult,
    aggregate,
    build_report,
    default_ks,
    is_correct,
    markdown_report,
    mean_pass_at_k,
    pass_at_k,
    write_report,
)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_matches_bruteforce(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_and_edges():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # large n: stable, equals the binomial formula
    n, c, k = 200, 7, 50
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)
    for bad in ((3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)):
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)


def test_mean_pass_at_k_and_default_ks():
    assert mean_pass_at_k([(4, 1), (4, 0)], 1) == pytest.approx(0.125)
    assert math.isnan(mean_pass_at_k([], 1))
    assert default_ks(1) == [1]
    assert default_ks(5) == [1, 2, 4, 5]
    assert default_ks(8) == [1, 2, 4, 8]


def test_is_correct_modes():
    kw = dict(em=0.0, f1=0.6, math_correct=True, reward=0.6)
    assert is_correct("auto", is_math=True, **kw)
    assert not is_correct("auto", is_math=False, **kw)
    assert is_correct("f1", is_math=False, threshold=0.5, **kw)
    assert is_correct("reward", is_math=False, threshold=0.5, **kw)
    assert not is_correct("reward", is_math=False, threshold=1.0, **kw)
    with pytest.raises(ValueError, match="correct_by"):
        is_correct("nope", is_math=False, **kw)


def _sample(q, i, correct, seed=0, calls=(), tokens=10, s="set"):
    return SampleResult(eval_set=s, question_id=q, sample=i, seed=seed, correct=correct, reward=float(correct),
                        em=float(correct), f1=0.5 + 0.5 * correct, format_ok=True, answer="x",
                        response_tokens=tokens, model_tokens=tokens - 2, tool_calls=tuple(calls),
                        finish_reason="eos")


def test_aggregate_random_against_reference():
    rng = random.Random(0)
    samples, truth = [], []
    for q in range(7):
        outcomes = [rng.random() < 0.4 for _ in range(6)]
        truth.append(outcomes)
        samples += [_sample(f"q{q}", i, o) for i, o in enumerate(outcomes)]
    m = aggregate(samples)
    assert m["questions"] == 7 and m["samples"] == 42 and m["samples_per_question"] == 6
    assert set(m["pass@k"]) == {"1", "2", "4", "6"}
    for k in (1, 2, 4, 6):
        ref = sum(brute_pass_at_k(6, sum(o), k) for o in truth) / 7
        assert m["pass@k"][str(k)] == pytest.approx(ref)
    assert m["pass@1"] == pytest.approx(sum(map(sum, truth)) / 42)
    assert m["em"] == pytest.approx(m["pass@1"])
    assert m["math_equiv"] is None


def test_aggregate_tools_and_lengths():
    py_ok = {"tool": "python", "ok": True, "status": "ok"}
    py_bad = {"tool": "python", "ok": False, "status": "timeout"}
    se_ok = {"tool": "search", "ok": True, "status": "ok"}
    parse = {"tool": "", "ok": False, "status": "parse_error"}
    samples = [
        _sample("a", 0, True, calls=[py_ok, py_bad], tokens=10),
        _sample("a", 1, False, calls=[se_ok], tokens=20),
        _sample("b", 0, False, calls=[], tokens=30),
        _sample("b", 1, True, calls=[py_ok, parse], tokens=40),
    ]
    m = aggregate(samples, ks=[1, 2, 3])
    assert set(m["pass@k"]) == {"1", "2"}  # k=3 > samples per question
    tc = m["tool_calls_per_question"]
    assert tc["python"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert tc["search"] == pytest.approx((1 / 2 + 0) / 2)
    assert tc["parse"] == pytest.approx((0 + 1 / 2) / 2)
    assert tc["total"] == pytest.approx((3 / 2 + 2 / 2) / 2)
    fr = m["tool_failure_rate"]
    assert fr["python"] == pytest.approx(1 / 3) and fr["search"] == 0.0 and fr["parse"] == 1.0
    assert fr["total"] == pytest.approx(2 / 5)
    assert m["tool_status"]["python"] == {"ok": 2, "timeout": 1}
    assert m["response_tokens"]["mean"] == 25 and m["response_tokens"]["max"] == 40
    assert m["model_tokens"]["mean"] == 23
    assert m["finish_reasons"] == {"eos": 4}


def test_report_seeds_markdown_json(tmp_path):
    samples = []
    for seed in (0, 1):
        for q in ("a", "b"):
            for i in range(2):
                samples.append(_sample(q, i, (seed + i) % 2 == 0, seed=seed, s="gsm8k",
                                       calls=[{"tool": "python", "ok": True, "status": "ok"}]))
        samples.append(_sample("z", 0, True, seed=seed, s="hotpotqa"))
    report = build_report(samples, extra={"config": {"x": 1}})
    assert report["seeds"] == [0, 1] and report["config"] == {"x": 1}
    g = report["sets"]["gsm8k"]
    assert set(g["per_seed"]) == {"0", "1"}
    assert g["summary"]["pass@k.1"]["mean"] == pytest.approx(0.5)
    assert g["summary"]["pass@k.2"]["n"] == 2
    md = markdown_report(report)
    assert "| gsm8k | 2 | 2 |" in md and "pass@2" in md and "python calls/q" in md
    assert "seeds: 0, 1" in md
    paths = write_report(report, tmp_path / "out", samples)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["sets"]["hotpotqa"]["per_seed"]["0"]["pass@k"] == {"1": 1.0}
    assert paths["markdown"].read_text() == md
    lines = paths["samples"].read_text().splitlines()
    assert len(lines) == len(samples) and json.loads(lines[0])["question_id"] == "a"


def test_write_report_handles_nan(tmp_path):
    report = build_report([_sample("a", 0, False)])
    report["sets"]["set"]["per_seed"]["0"]["pass@1"] = float("nan")
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["sets"]["set"]["per_seed"]["0"]["pass@1"] is None
