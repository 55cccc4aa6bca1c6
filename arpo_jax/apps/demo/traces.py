"""Cold-start SFT traces for the demo tasks, with tool results produced by the real tools.

Each trace is a row in the project's SFT ``trace`` format (``arpo_jax.data.sft_data``)::

    {"id", "prompt": [system, user], "response_segments": [{"text", "kind": "model"|"tool"}],
     "eos": true, "kind", "style", "correct"}

Model segments end at a tool's closing tag (where the sampler stops); tool segments are the
dispatcher's ``Observation.text`` (`` <result>\\n...\\n</result>``), so SFT sees exactly the
bytes RL will insert. Styles:

* ``tool``: the shortest correct solution (one call per step of ``Task.calls``);
* ``redundant``: correct, but one call is repeated before answering;
* ``guess``: answers without the tool(s) a step needs -> a plausible wrong answer (for
  ``multihop`` most guesses search first and then skip the Python step, so the decision to
  guess happens right after a tool result, where ARPO branches).

``style_shares`` sets the share of each imperfect style per kind: the cold-start policy
learns those branch probabilities, which is the room RL has to improve on.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from arpo_jax.apps.demo.tasks import SYSTEM_PROMPT, Task, prompt_messages

THINK_TOOL = {"arith": "Use python.", "fact": "Use search.", "multihop": "Use search."}
THINK_GUESS = "Guess."
THINK_GUESS_AFTER = "Guess."


@dataclasses.dataclass(frozen=True)
class TraceMix:
    """Share of imperfect traces per kind: ``guess[kind]`` and ``redundant`` (all kinds);
    ``search_then_guess``: share of multi-hop guesses that search first and skip Python."""

    guess: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"arith": 0.6, "fact": 0.3, "multihop": 0.25})
    redundant: float = 0.1
    search_then_guess: float = 0.8


def answer_text(answer: str) -> str:
    """The final answer block, in the release's format."""
    return f"<answer>\\boxed{{{answer}}}</answer>"


def wrong_answer(task: Task, rng: random.Random, pool: Sequence[str] = ()) -> str:
    """A plausible wrong answer: a number with some digits changed, or another name from ``pool``."""
    gold = task.answer
    if gold.isdigit():
        for _ in range(100):
            digits = list(gold)
            keep = max(1, len(digits) // 2) if task.kind != "fact" else 2
            for i in range(keep, len(digits)):
                digits[i] = str(rng.randint(0, 9))
            guess = "".join(digits)
            if guess != gold:
                return guess
        return str(int(gold) + 1)
    others = [p for p in pool if p != gold]
    return rng.choice(others) if others else gold + "a"


def _call_text(tool: str, body: str) -> str:
    return f"<{tool}>{body}</{tool}>"


def plan_trace(task: Task, style: str, rng: random.Random, pool: Sequence[str] = (),
               search_then_guess: float = 0.8) -> list[tuple[str, object]]:
    """The trace as ("model", text) and ("call", (tool, body)) steps; calls get observations later."""
    if style == "guess":
        if task.kind == "multihop" and rng.random() < search_then_guess:  # search, then skip the python step
            return [("model", f"<think>{THINK_TOOL['multihop']}</think>" + _call_text(*task.calls[0])),
                    ("call", task.calls[0]),
                    ("model", f"<think>{THINK_GUESS_AFTER}</think>" + answer_text(wrong_answer(task, rng, pool)))]
        return [("model", f"<think>{THINK_GUESS}</think>" + answer_text(wrong_answer(task, rng, pool)))]
    calls = list(task.calls)
    if style == "redundant":
        i = rng.randrange(len(calls))
        calls.insert(i + 1, calls[i])
    steps: list[tuple[str, object]] = []
    prefix = f"<think>{THINK_TOOL[task.kind]}</think>"
    for call in calls:
        steps.append(("model", prefix + _call_text(*call)))
        steps.append(("call", call))
        prefix = ""
    steps.append(("model", answer_text(task.answer)))
    return steps


def choose_style(task: Task, mix: TraceMix, rng: random.Random) -> str:
    """"guess", "redundant" or "tool" for one task."""
    r = rng.random()
    g = mix.guess.get(task.kind, 0.0)
    if r < g:
        return "guess"
    return "redundant" if r < g + mix.redundant else "tool"


_PRINT_EXPR = re.compile(r"print\((\d+)\*(\d+)(?:\+(\d+))?\)")


def predicted_python_output(body: str) -> str:
    """What ``print(a*b)`` / ``print(a*b+c)`` prints (the demo's only kind of Python call)."""
    m = _PRINT_EXPR.fullmatch(body)
    if m is None:
        raise ValueError(f"not a demo Python call: {body!r}")
    return str(int(m[1]) * int(m[2]) + int(m[3] or 0))


def run_calls(calls: Sequence[tuple[str, str]], dispatcher, python_sample: int | None = 64) -> dict:
    """Observation text of each distinct (tool, body) call, produced by ``dispatcher``.

    Every search call runs on the real tool. Python calls are all run when ``python_sample``
    is None; otherwise a deterministic sample of that many is run in the real sandbox and must
    equal the predicted observation (the printed value in the dispatcher's observation
    template), which is then used for the others: a sandboxed interpreter costs ~40 ms a call,
    too much for thousands of traces on 2 cores. Raises ``RuntimeError`` on a failed call.
    """
    from arpo_jax.tools import ToolCall, format_observation

    unique = sorted(set(calls))
    py = [c for c in unique if c[0] == "python"]
    sample = set(py if python_sample is None else random.Random(len(py)).sample(py, min(python_sample, len(py))))
    real = [c for c in unique if c[0] != "python" or c in sample]
    obs_of = {}
    for call, obs in zip(real, dispatcher.run_batch([ToolCall(tool=t, body=b) for t, b in real])):
        if not obs.ok:
            raise RuntimeError(f"tool call {call} failed while building traces: {obs.status}: {obs.content[:200]}")
        obs_of[call] = obs.text
    for call in py:
        predicted = format_observation(predicted_python_output(call[1]), dispatcher.protocol)
        if call in obs_of and obs_of[call] != predicted:
            raise RuntimeError(f"python tool answered {obs_of[call]!r} to {call[1]!r}, expected {predicted!r}")
        obs_of.setdefault(call, predicted)
    return obs_of


def make_traces(tasks: Sequence[Task], dispatcher, *, seed: int = 0, mix: TraceMix | None = None,
                system_prompt: str = SYSTEM_PROMPT, python_sample: int | None = 64) -> list[dict]:
    """One SFT trace row per task, with observations from ``dispatcher`` (a
    ``arpo_jax.tools.ToolDispatcher`` with the same python/search configs RL will use; see
    ``run_calls`` for ``python_sample``).

    For a correct trace, the gold answer must appear in the observation of its last call
    (checked, ``RuntimeError`` otherwise).
    """
    mix = mix or TraceMix()
    rng = random.Random(f"arpo-demo-traces-{seed}")
    pool = sorted({t.answer for t in tasks if not t.answer.isdigit()})
    plans = []
    for task in tasks:
        style = choose_style(task, mix, rng)
        plans.append((task, style, plan_trace(task, style, rng, pool, mix.search_then_guess)))
    obs_of = run_calls([step[1] for _, _, steps in plans for step in steps if step[0] == "call"], dispatcher,
                       python_sample)
    rows = []
    for task, style, steps in plans:
        segments = [{"text": s[1], "kind": "model"} if s[0] == "model" else {"text": obs_of[s[1]], "kind": "tool"}
                    for s in steps]
        correct = style != "guess"
        if correct and task.answer not in obs_of[task.calls[-1]]:
            raise RuntimeError(f"{task.id}: gold answer {task.answer!r} not in the tool result "
                               f"{obs_of[task.calls[-1]]!r}")
        rows.append({"id": task.id, "prompt": prompt_messages(task.question, system_prompt),
                     "response_segments": segments, "eos": True, "kind": task.kind, "style": style,
                     "correct": correct, "answer": task.answer})
    return rows


def response_text(row: dict) -> str:
    """The trajectory text of a trace (everything after the prompt), as rewards see it."""
    return "".join(s["text"] for s in row["response_segments"])


def write_traces(rows: Sequence[dict], path: str | Path) -> str:
    """Writes trace rows as JSONL; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
