"""Verifiable rewards for tool-using agents (pure Python, no JAX).

* ``arpo_f1``: the ARPO release's reward, reproduced exactly (format check, token F1 of the
  last ``\\boxed{}`` in ``<answer>``, +0.1 when both tools were used, -1 for a bad format);
* ``math``: mathematical equivalence of the final answer (math-verify, with timeouts);
* ``qa_em`` / ``qa_f1``: the evaluation's exact match / token F1 over a list of references
  (``scoring``: Unicode-aware, CJK characters as tokens, no match for empty answers; the
  release's SQuAD functions in ``text`` are kept for ``arpo_f1`` only);
* ``format``: 1 when the release's format check passes.

Every reward takes the whole trajectory text (after the prompt, tool results included), the
reference answers and a ``RewardConfig``, and returns a ``RewardResult`` with its components.
"""

from .arpo_f1 import arpo_f1_reward
from .format import ToolCounts, count_tools, validate_format
from .math_equiv import math_equal
from .registry import (
    MATH_SOURCES,
    get_reward_fn,
    is_math,
    register_reward,
    reward_for,
    reward_names,
    select_reward_name,
)
from .scoring import (
    eval_em_score,
    eval_f1_score,
    eval_tokens,
    gold_flags,
    math_matches,
    normalize_eval,
    raw_form,
    unbox,
)
from .text import (
    extract_final_answer,
    last_boxed,
    normalize_answer,
    qa_em_score,
    qa_f1_score,
    release_boxed_answer,
)
from .types import RewardConfig, RewardFn, RewardResult
from .verifiable import format_reward, math_reward, qa_em_reward, qa_f1_reward

__all__ = [
    "MATH_SOURCES",
    "RewardConfig",
    "RewardFn",
    "RewardResult",
    "ToolCounts",
    "arpo_f1_reward",
    "count_tools",
    "eval_em_score",
    "eval_f1_score",
    "eval_tokens",
    "extract_final_answer",
    "format_reward",
    "get_reward_fn",
    "gold_flags",
    "is_math",
    "last_boxed",
    "math_equal",
    "math_matches",
    "math_reward",
    "normalize_answer",
    "normalize_eval",
    "qa_em_reward",
    "qa_f1_reward",
    "qa_f1_score",
    "qa_em_score",
    "raw_form",
    "register_reward",
    "release_boxed_answer",
    "reward_for",
    "reward_names",
    "select_reward_name",
    "unbox",
    "validate_format",
]
