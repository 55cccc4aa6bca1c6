"""Datasets for ARPO: the released RL parquet files, the benchmark JSONL files, prompts,
chat templates, tokenizer loading and a TFDS (array_record) store. Knows nothing about JAX.

Everything is read into ``Example`` records. The TFDS names (``ArpoExamples``,
``write_examples``, ``load_examples``, ``build_released``, ``ExampleSource``) are imported
lazily because ``tensorflow_datasets`` is slow to import.
"""

from __future__ import annotations

import importlib
from typing import Any

from .chat import EncodedPrompt, encode_prompt, encode_prompts, render_prompt
from .eval_jsonl import (
    EVAL_FILES,
    MATH_BENCHMARKS,
    RL_FILES,
    default_data_root,
    read_all_eval,
    read_eval_jsonl,
    read_eval_set,
)
from .overlap import Overlap, drop_overlap, find_overlap, normalize_question, overlap_counts
from .prompts import (
    ARPO_SYSTEM_PROMPT,
    ARPO_SYSTEM_PROMPT_RAW,
    arpo_system_prompt,
    build_messages,
    fix_system_prompt,
    repair_latex_escapes,
)
from .records import DataError, Example
from .rl_parquet import read_rl_parquet
from .tokenizer import check_exported_tokenizer, load_tokenizer

_TFDS_NAMES = {"ArpoExamples", "ExampleSource", "write_examples", "load_examples", "build_released"}

__all__ = [
    "ARPO_SYSTEM_PROMPT",
    "ARPO_SYSTEM_PROMPT_RAW",
    "EVAL_FILES",
    "MATH_BENCHMARKS",
    "RL_FILES",
    "DataError",
    "EncodedPrompt",
    "Example",
    "Overlap",
    "arpo_system_prompt",
    "build_messages",
    "check_exported_tokenizer",
    "default_data_root",
    "drop_overlap",
    "encode_prompt",
    "encode_prompts",
    "find_overlap",
    "load_tokenizer",
    "fix_system_prompt",
    "normalize_question",
    "overlap_counts",
    "read_all_eval",
    "read_eval_jsonl",
    "read_eval_set",
    "read_rl_parquet",
    "render_prompt",
    "repair_latex_escapes",
    *sorted(_TFDS_NAMES),
]


def __getattr__(name: str) -> Any:
    if name in _TFDS_NAMES:
        return getattr(importlib.import_module(".tfds_builder", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
