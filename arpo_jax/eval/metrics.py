"""Evaluation metrics (pure Python, no JAX): pass@k, answer scores, tool and length statistics.

One ``SampleResult`` per generated answer (question × sample × seed). ``aggregate`` turns the
samples of one eval set and one seed into a ``SetMetrics``; ``summarize_seeds`` averages a
set's per-seed metrics; ``markdown_report`` and ``write_report`` render and save the lot.

pass@k is the unbiased estimator of Chen et al. (2021), computed per question from its n
samples of which c are correct, ``1 - C(n-c, k) / C(n, k)``, in the numerically stable product
form ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, and averaged over questions. pass@1 is the mean
correctness over all samples of a question (the estimator with k = 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

CorrectBy = Literal["auto", "em", "math", "f1", "reward"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with ``n`` samples, ``c`` of them correct.

    Raises ``ValueError`` unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean of ``pass_at_k(n, c, k)`` over questions given as ``(n, c)`` pairs (NaN if none)."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    return sum(values) / len(values) if values else float("nan")


def default_ks(k: int) -> list[int]:
    """1, the powers of two below ``k``, and ``k`` itself."""
    ks, p = {1, k}, 2
    while p < k:
        ks.add(p)
        p *= 2
    return sorted(ks)


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """One generated answer and its scores.

    Attributes:
        eval_set: benchmark name; question_id: ``Example.id``; sample: index among the k
            samples of the question; seed: the run seed that produced it.
        correct: the verdict used for pass@k (see ``is_correct``).
        reward: the configured reward's score; reward_name: which reward it was.
        em / f1: SQuAD exact match / token F1 of the final answer (None: not computed).
        math_correct: math equivalence of the final answer (None: not a math set).
        format_ok: the release's format check; answer: extracted final answer.
        response_tokens: response length (model and tool tokens); model_tokens: mask-1 tokens.
        tool_calls: ``{"tool", "ok", "status"}`` per call, in order.
        finish_reason: why generation stopped (eos, length, tool_limit, ...).
        gold_flags: how the question's references were scored (``scoring.gold_flags``), e.g.
            ``raw_form`` for a reference such as ``"A"`` that normalises to nothing.
    """

    eval_set: str
    question_id: str
    sample: int
    seed: int
    correct: bool
    reward: float = 0.0
    reward_name: str = ""
    em: float | None = None
    f1: float | None = None
    math_correct: bool | None = None
    format_ok: bool = False
    answer: str | None = None
    response_tokens: int = 0
    model_tokens: int = 0
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str = ""
    gold_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        d = dataclasses.asdict(self)
        d["tool_calls"] = [dict(c) for c in self.tool_calls]
        d["gold_flags"] = list(self.gold_flags)
        return d


def is_correct(correct_by: CorrectBy, *, em: float | None, f1: float | None, math_correct: bool | None,
               reward: float, is_math: bool, threshold: float = 1.0) -> bool:
    """The pass@k verdict of one sample.

    ``auto``: math equivalence on math sets, exact match elsewhere; ``em``; ``math``;
    ``f1``: F1 >= ``threshold``; ``reward``: reward score >= ``threshold``.
    """
    if correct_by == "auto":
        correct_by = "math" if is_math else "em"
    if correct_by == "math":
        return bool(math_correct)
    if correct_by == "em":
        return (em or 0.0) >= 1.0
    if correct_by == "f1":
        return (f1 or 0.0) >= threshold
    if correct_by == "reward":
        return reward >= threshold
    raise ValueError(f"correct_by must be auto, em, math, f1 or reward, got {correct_by!r}")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _length_stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0.0}
    s = sorted(values)
    return {"mean": sum(s) / len(s), "median": float(statistics.median(s)),
            "p90": float(s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]), "max": float(s[-1])}


def aggregate(samples: Sequence[SampleResult], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Metrics of one eval set (and one seed) from its samples.

    pass@k is reported for every k in ``ks`` (default ``default_ks(min samples per question)``)
    not larger than the smallest number of samples of a question. Tool calls per question are
    averaged over the samples of each question, then over questions. ``gold_flags`` counts the
    questions whose references carry each flag.
    """
    by_q: dict[str, list[SampleResult]] = defaultdict(list)
    for s in samples:
        by_q[s.question_id].append(s)
    counts = [(len(v), sum(x.correct for x in v)) for v in by_q.values()]
    n_min = min((n for n, _ in counts), default=0)
    ks = sorted(set(ks)) if ks else default_ks(n_min) if n_min else []
    out: dict[str, Any] = {"questions": len(by_q), "samples": len(samples),
                           "samples_per_question": n_min,
                           "pass@k": {str(k): mean_pass_at_k(counts, k) for k in ks if 1 <= k <= n_min}}
    out["pass@1"] = mean_pass_at_k(counts, 1) if counts else float("nan")
    for key, field in (("em", "em"), ("f1", "f1"), ("math_equiv", "math_correct")):
        vals = [float(getattr(s, field)) for s in samples if getattr(s, field) is not None]
        out[key] = _mean(vals)
    out["reward"] = _mean([s.reward for s in samples])
    out["format_ok"] = _mean([float(s.format_ok) for s in samples])
    out["answered"] = _mean([float(s.answer is not None) for s in samples])
    out["gold_flags"] = dict(sorted(Counter(f for v in by_q.values() for f in v[0].gold_flags).items()))

    tools = sorted({c.get("tool") or "parse" for s in samples for c in s.tool_calls})
    per_q: dict[str, list[float]] = {t: [] for t in (*tools, "total")}
    for v in by_q.values():
        for t in tools:
            per_q[t].append(sum(1 for s in v for c in s.tool_calls if (c.get("tool") or "parse") == t) / len(v))
        per_q["total"].append(sum(len(s.tool_calls) for s in v) / len(v))
    out["tool_calls_per_question"] = {t: _mean(x) or 0.0 for t, x in per_q.items()}
    calls: Counter[str] = Counter()
    fails: Counter[str] = Counter()
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        for c in s.tool_calls:
            t = c.get("tool") or "parse"
            calls[t] += 1
            fails[t] += not c.get("ok", c.get("status") in ("ok", "no_output"))
            statuses[t][str(c.get("status", "unknown"))] += 1
    total = sum(calls.values())
    out["tool_failure_rate"] = {t: fails[t] / calls[t] for t in tools}
    out["tool_failure_rate"]["total"] = sum(fails.values()) / total if total else 0.0
    out["tool_status"] = {t: dict(statuses[t]) for t in tools}
    out["response_tokens"] = _length_stats([s.response_tokens for s in samples])
    out["model_tokens"] = _length_stats([s.model_tokens for s in samples])
    out["finish_reasons"] = dict(Counter(s.finish_reason for s in samples))
    return out


def _numeric_paths(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            flat.update(_numeric_paths(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[prefix + k] = float(v)
    return flat


def summarize_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std over seeds of every numeric metric (dotted keys, e.g. ``pass@k.4``)."""
    flats = [_numeric_paths(m) for m in per_seed.values()]
    keys = sorted(set().union(*flats)) if flats else []
    out = {}
    for key in keys:
        vals = [f[key] for f in flats if key in f and not math.isnan(f[key])]
        if vals:
            out[key] = {"mean": sum(vals) / len(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "n": len(vals)}
    return out


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def _cell(summary: Mapping[str, Mapping[str, float]], key: str, pct: bool = True) -> str:
    s = summary.get(key)
    if s is None:
        return "–"
    text = _fmt(s["mean"], pct)
    return text + (f" ± {_fmt(s['std'], pct)}" if s["n"] > 1 else "")


def _gold_notes(sets: Mapping[str, Any]) -> list[str]:
    """One line per set whose references carry ``gold_flags`` (questions per flag), else none."""
    lines = []
    for name, s in sets.items():
        flags = {k.split(".", 1)[1]: v["mean"] for k, v in s["summary"].items()
                 if k.startswith("gold_flags.")}
        if flags:
            lines.append(f"golds of {name}: " + ", ".join(f"{int(n)} {f}" for f, n in sorted(flags.items())))
    return ["", *lines, "(see docs/scoring.md)"] if lines else []


def markdown_report(report: Mapping[str, Any]) -> str:
    """Two Markdown tables (answers, tools) of a report made by the runner or ``build_report``.

    Percentages for pass@k, EM, F1, math and format; ``± std`` over seeds when several. Sets
    with flagged references (``gold_flags``) get a line between the tables.
    """
    sets = report["sets"]
    ks = sorted({int(k) for s in sets.values() for key in s["summary"] if key.startswith("pass@k.")
                 for k in [key.split(".", 1)[1]]})
    head = ["set", "questions", "k", *[f"pass@{k}" for k in ks], "EM", "F1", "math", "format", "reward",
            "len (tok)"]
    lines = [f"seeds: {', '.join(map(str, report.get('seeds', [])))}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in sets.items():
        sm = s["summary"]
        row = [name, str(s["questions"]), str(s["samples_per_question"]),
               *[_cell(sm, f"pass@k.{k}") for k in ks],
               _cell(sm, "em"), _cell(sm, "f1"), _cell(sm, "math_equiv"), _cell(sm, "format_ok"),
               _cell(sm, "reward", pct=False), _cell(sm, "response_tokens.mean", pct=False)]
        lines.append("| " + " | ".join(row) + " |")
    lines += _gold_notes(sets)
    tools = sorted({k.split(".", 1)[1] for s in sets.values() for k in s["summary"]
                    if k.startswith("tool_calls_per_question.")} - {"total"}) + ["total"]
    head = ["set", *[f"{t} calls/q" for t in tools], *[f"{t} fail %" for t in tools]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in sets.items():
        sm = s["summary"]
        row = [name, *[_cell(sm, f"tool_calls_per_question.{t}", pct=False) for t in tools],
               *[_cell(sm, f"tool_failure_rate.{t}") for t in tools]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def build_report(samples: Sequence[SampleResult], ks: Sequence[int] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Groups samples by set and seed: ``{"seeds", "sets": {name: {"per_seed", "summary", ...}}}``."""
    grouped: dict[str, dict[int, list[SampleResult]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        grouped[s.eval_set][s.seed].append(s)
    sets = {}
    for name, by_seed in grouped.items():
        per_seed = {seed: aggregate(v, ks) for seed, v in sorted(by_seed.items())}
        first = next(iter(per_seed.values()))
        sets[name] = {"questions": first["questions"], "samples_per_question": first["samples_per_question"],
                      "per_seed": {str(k): v for k, v in per_seed.items()},
                      "summary": summarize_seeds(per_seed)}
    seeds = sorted({s.seed for s in samples})
    return {**(extra or {}), "seeds": seeds, "sets": sets}


def write_report(report: Mapping[str, Any], out_dir: str | Path,
                 samples: Sequence[SampleResult] = ()) -> dict[str, Path]:
    """Writes ``metrics.json``, ``metrics.md`` and (when given) ``samples.jsonl`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md"}
    paths["json"].write_text(json.dumps(clean_json(report), indent=2, default=_json_default, allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown_report(report))
    if samples:
        paths["samples"] = out / "samples.jsonl"
        with open(paths["samples"], "w") as f:
            for s in samples:
                f.write(json.dumps(s.to_dict(), default=_json_default) + "\n")
    return paths


def clean_json(x: Any) -> Any:
    """A copy of nested dicts/lists with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
