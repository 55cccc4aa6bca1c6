"""Evaluation: pass@k with answer scores and tool statistics, and entropy around tool calls.

``metrics`` and ``entropy`` are pure Python/NumPy (no JAX); the runner behind ``arpo-jax eval``
(``arpo_jax.eval.runner``: ``EvalConfig``, ``run_eval``) imports JAX and is loaded lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from .entropy import EntropyAnalysis, analyze_entropy, iter_dump_records, plot_entropy
from .metrics import (
    SampleResult,
    aggregate,
    build_report,
    default_ks,
    is_correct,
    markdown_report,
    mean_pass_at_k,
    pass_at_k,
    summarize_seeds,
    write_report,
)

_RUNNER_NAMES = {"EvalConfig", "EvalDataConfig", "run_eval"}

__all__ = [
    "EntropyAnalysis",
    "SampleResult",
    "aggregate",
    "analyze_entropy",
    "build_report",
    "default_ks",
    "is_correct",
    "iter_dump_records",
    "markdown_report",
    "mean_pass_at_k",
    "pass_at_k",
    "plot_entropy",
    "summarize_seeds",
    "write_report",
    *sorted(_RUNNER_NAMES),
]


def __getattr__(name: str) -> Any:
    if name in _RUNNER_NAMES:
        return getattr(importlib.import_module(".runner", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
