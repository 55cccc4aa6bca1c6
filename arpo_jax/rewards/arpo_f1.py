"""The reward of the ARPO release (``deep_research.compute_score``), reproduced exactly.

* ill-formed trajectory (``validate_format``) -> ``-1``;
* the answer is the last ``\\boxed`` of the ``<answer>`` block (release quirks included);
  failing to extract it -> ``-1``;
* otherwise the SQuAD token F1 against the ground truth (best over a list), for math too;
  so ``-1`` vs ``1`` scores 1.0 (punctuation is dropped) and ``\\frac{1}{2}`` vs ``1/2``
  scores 0 (``frac12`` vs ``12``);
* ``+0.1`` when F1 > 0 and both ``</search>`` and ``</python>`` occur in the trajectory;
* a wrong answer in a good format scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .format import count_tools, validate_format
from .text import qa_f1_score, release_boxed_answer
from .types import RewardConfig, RewardResult

MULTI_TOOL_BONUS = 0.1
INVALID_SCORE = -1.0
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def arpo_f1_reward(text: str, answers: Sequence[str], config: RewardConfig | None = None) -> RewardResult:
    """The release's reward for one trajectory (the text after the prompt, tool results included).

    ``config.eos_token`` is stripped (after the format check, as in the release) when the text
    ends with it; the other config fields do not apply to this reward.
    """
    config = config or RewardConfig()
    tools = count_tools(text)

    def result(
        score: float, format_ok: bool, reason: str, answer: str | None = None, f1: float | None = None
    ) -> RewardResult:
        return RewardResult(
            score=score,
            name="arpo_f1",
            format_ok=format_ok,
            reason=reason,
            answer=answer,
            f1=f1,
            n_search=tools.search,
            n_python=tools.python,
        )

    ok, reason = validate_format(text)
    if not ok:
        return result(INVALID_SCORE, False, f"bad format: {reason}")
    eos = config.eos_token
    if eos and text.endswith(eos):
        text = text[: -len(eos)]
    match = _ANSWER.search(text.strip())
    if match is None:
        return result(INVALID_SCORE, True, "cannot extract answer")
    try:
        answer = release_boxed_answer(match.group(1))
    except ValueError as e:
        return result(INVALID_SCORE, True, f"find box error: {e}")
    f1 = qa_f1_score(answer, answers)
    if f1 > 0 and tools.both_tools_used:
        return result(
            f1 + MULTI_TOOL_BONUS, True, "correct answer with search and python", answer=answer, f1=f1
        )
    if f1 > 0:
        return result(f1, True, "correct answer", answer=answer, f1=f1)
    return result(0.0, True, "wrong answer but good format", answer=answer, f1=0.0)
