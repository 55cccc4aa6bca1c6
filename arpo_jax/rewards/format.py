"""The trajectory format check of the ARPO release, and tool-call counts.

A trajectory (everything after the prompt: model text and the inserted ``<result>`` blocks)
is well formed when:

1. ``<think>`` and ``</think>`` occur equally often, at least once;
2. ``<answer>`` and ``</answer>`` occur exactly once each, in that order;
3. after every ``<search>`` (and every ``<python>``) come, in order, its closing tag, a
   ``<result>`` and a ``</result>`` (scanning resumes after that ``</result>``);
4. the text from ``<answer>`` to ``</answer>`` contains ``\\boxed{`` and a ``}``.

The checks run in this order and the first failure is the reason reported.
"""

from __future__ import annotations

import dataclasses

TOOLS = ("search", "python")


def _check_tool(text: str, tool: str) -> str | None:
    open_tag, close_tag = f"<{tool}>", f"</{tool}>"
    pos = 0
    while (start := text.find(open_tag, pos)) != -1:
        result = text.find("<result>", start)
        close = text.find(close_tag, start)
        result_end = text.find("</result>", result)  # result == -1 searches from the end
        if -1 in (result, close, result_end):
            return f"{tool}/result tags are incomplete"
        if not start < close < result < result_end:
            return f"{tool}/result tags are nested in the wrong order"
        pos = result_end
    return None


def validate_format(text: str) -> tuple[bool, str]:
    """``(ok, reason)`` for the release's format rules (see the module docstring)."""
    n_think, n_end_think = text.count("<think>"), text.count("</think>")
    if n_think != n_end_think:
        return False, "<think> </think> not paired"
    if n_think == 0:
        return False, "<think> or </think> not found"
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return False, "<answer> or </answer> not found"
    for tool in TOOLS:
        problem = _check_tool(text, tool)
        if problem:
            return False, problem
    start, end = text.find("<answer>"), text.find("</answer>")
    if start > end:
        return False, "<answer> must be before </answer>"
    block = text[start:end]
    if "\\boxed{" not in block or "}" not in block:
        return False, "answer is missing \\boxed{} format"
    return True, "format is correct"


@dataclasses.dataclass(frozen=True)
class ToolCounts:
    """How many tool calls a trajectory made (opening tags) and which tools were closed."""

    search: int
    python: int
    closed_search: bool
    closed_python: bool

    @property
    def both_tools_used(self) -> bool:
        """The release's bonus condition: ``"</search>"`` and ``"</python>"`` both occur."""
        return self.closed_search and self.closed_python


def count_tools(text: str) -> ToolCounts:
    """Tool-call counts of a trajectory."""
    return ToolCounts(
        search=text.count("<search>"),
        python=text.count("<python>"),
        closed_search="</search>" in text,
        closed_python="</python>" in text,
    )
