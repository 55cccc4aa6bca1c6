"""From rollout trajectories to scored samples and dump records (no JAX).

``score_text`` scores one response with the configured reward plus the evaluation's own
components (EM / F1 of the final answer for every set, math equivalence for math sets, all with
``arpo_jax.rewards.scoring``) and the quirks of the question's references (``gold_flags``);
``call_starts`` finds the response position where each tool call's opening tag begins, which
the entropy analysis needs for its "around the call" curve and the rollout does not record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from arpo_jax.data.records import Example
from arpo_jax.rewards import (
    RewardConfig,
    RewardResult,
    gold_flags,
    is_math,
    math_reward,
    qa_f1_reward,
    reward_for,
)

from .metrics import CorrectBy, SampleResult, is_correct


@dataclasses.dataclass(frozen=True)
class Scored:
    """The configured reward and the evaluation's components of one response.

    ``gold_flags``: how the references were handled (``scoring.gold_flags``: ``raw_form``,
    ``boxed_gold``, ``unbalanced_braces``, ``empty_gold``).
    """

    reward: RewardResult
    em: float | None
    f1: float | None
    math_correct: bool | None
    correct: bool
    gold_flags: tuple[str, ...] = ()


def score_text(example: Example, text: str, config: RewardConfig, *, correct_by: CorrectBy = "auto",
               threshold: float = 1.0) -> Scored:
    """Scores ``text`` (the response, tool results included) against ``example.answers``.

    EM / F1 / math equivalence ignore ``require_format`` and ``format_weight`` (they measure
    the final answer); the configured reward (``reward_for``) uses ``config`` as given.
    """
    primary = reward_for(example, text, config)
    plain = dataclasses.replace(config, name=None, require_format=False, format_weight=0.0)
    qa = qa_f1_reward(text, example.answers, plain)
    em = qa.em if qa.em is not None else (0.0 if qa.answer is None else None)
    f1 = qa.f1 if qa.f1 is not None else (0.0 if qa.answer is None else None)
    math_ok = None
    if is_math(example):
        math_ok = bool(math_reward(text, example.answers, plain).correct)
    correct = is_correct(correct_by, em=em, f1=f1, math_correct=math_ok, reward=primary.score,
                         is_math=is_math(example), threshold=threshold)
    return Scored(primary, em, f1, math_ok, correct, gold_flags(example.answers))


def _decoded_len(tokenizer, ids: Sequence[int]) -> int:
    return len(tokenizer.decode(list(ids), skip_special_tokens=False))


def call_starts(tokens: Sequence[int], tool_calls: Sequence[Any], obs_spans: Sequence[Sequence[int]], tokenizer,
                tool_names: Sequence[str]) -> list[int | None]:
    """Response position of the first token of each call's opening tag (None: not found).

    A call's text is the model segment that ends where its result starts (``call.start``);
    the opening tag is its last ``<tool>`` (any protocol tool for a call that did not parse).
    The token holding the tag's first character is found by bisection on decoded prefixes.
    """
    out: list[int | None] = []
    ends = sorted(int(e) for _, e in obs_spans)
    for call in tool_calls:
        get = call.get if isinstance(call, dict) else lambda k, c=call: getattr(c, k, None)
        res_start = int(get("start") or 0)
        seg_start = max([e for e in ends if e <= res_start], default=0)
        seg = list(tokens[seg_start:res_start])
        text = tokenizer.decode(seg, skip_special_tokens=False)
        names = [get("tool")] if get("tool") else list(tool_names)
        pos = max((text.rfind(f"<{n}>") for n in names), default=-1)
        if pos < 0 or not seg:
            out.append(None)
            continue
        lo, hi = 1, len(seg)  # smallest j with decoded(seg[:j]) longer than pos
        while lo < hi:
            mid = (lo + hi) // 2
            if _decoded_len(tokenizer, seg[:mid]) > pos:
                hi = mid
            else:
                lo = mid + 1
        out.append(seg_start + lo - 1)
    return out


def sample_result(example: Example, traj: Any, scored: Scored, *, seed: int, sample: int) -> SampleResult:
    """The ``SampleResult`` of one trajectory (``arpo_jax.rollout.Trajectory``) and its scores."""
    calls = []
    for c in traj.tool_calls:
        d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
        calls.append({"tool": d.get("tool", ""), "ok": bool(d.get("ok")), "status": d.get("status", "")})
    r = scored.reward
    return SampleResult(eval_set=example.data_source, question_id=example.id, sample=sample, seed=seed,
                        correct=scored.correct, reward=float(r.score), reward_name=r.name, em=scored.em,
                        f1=scored.f1, math_correct=scored.math_correct, format_ok=r.format_ok, answer=r.answer,
                        response_tokens=len(traj.tokens), model_tokens=int(sum(traj.mask)),
                        tool_calls=tuple(calls), finish_reason=traj.finish_reason,
                        gold_flags=scored.gold_flags)
