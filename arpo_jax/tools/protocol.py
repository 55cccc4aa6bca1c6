"""Tool-call parsing and observation formatting.

The model writes ``<python>code</python>`` or ``<search>query</search>``; generation stops
at the closing tag. ``parse_tool_call`` finds the last complete call in the text and returns
a ``ToolCall``; a malformed call (unclosed tag, empty body, nested or unknown tag, absurd
length) returns a ``ParseError`` whose message is meant to be shown to the model; text with
no call at all returns ``None``. The parser never raises on model text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .config import ProtocolConfig

_TAG_RE = re.compile(r"</?([A-Za-z][A-Za-z0-9_\-]{0,31})>")


@dataclass(frozen=True)
class ToolCall:
    """A well-formed call: ``body`` is exactly the text between the tags."""

    tool: str
    body: str
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class ParseError:
    """A malformed call; ``message`` explains the problem to the model."""

    reason: str
    message: str
    tool: str | None = None


@dataclass
class ToolOutput:
    """A tool's answer before formatting: text, status and details (see ``Observation``)."""

    content: str
    status: str
    meta: dict = field(default_factory=dict)


@dataclass
class Observation:
    """What the environment answers to one call.

    Attributes:
        text: the formatted observation to tokenize and append (e.g. `` <result>\\n…\\n</result>``).
        content: the tool's raw answer, before formatting.
        tool: tool name ("" for a call that could not be parsed).
        status: "ok", "no_output", "error", "timeout", "parse_error" or "unavailable".
        latency_s: wall time from submission to answer.
        meta: tool-specific details (sandbox mode, exit code, backend, ...).
    """

    text: str
    content: str
    tool: str
    status: str
    latency_s: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the tool ran normally (a "no output" run counts as normal)."""
        return self.status in ("ok", "no_output")


def format_observation(text: str, protocol: ProtocolConfig | None = None) -> str:
    """Wraps tool text in the observation template (release: ``" <result>\\n{text}\\n</result>"``)."""
    template = (protocol or ProtocolConfig()).observation_template
    return template.replace("{text}", text)


def stop_sequences(protocol: ProtocolConfig | None = None) -> tuple[str, ...]:
    """The closing tags at which decoding should stop, one per tool."""
    return tuple(f"</{t}>" for t in (protocol or ProtocolConfig()).tools)


def _error(reason: str, message: str, tool: str | None = None) -> ParseError:
    return ParseError(reason=reason, message=message, tool=tool)


def parse_tool_call(
    text: str, protocol: ProtocolConfig | None = None, stop: str | None = None
) -> ToolCall | ParseError | None:
    """Extracts the last complete tool call from model text.

    Args:
        text: the generated text (usually the segment since the last observation).
        protocol: tag names and limits.
        stop: the stop sequence that ended generation; when it is a tool's closing tag
            that the sampler stripped from the text, it is appended before parsing.

    Returns:
        ``ToolCall`` for a well-formed call, ``ParseError`` for a malformed one, ``None``
        when the text contains no call (e.g. a final answer).
    """
    try:
        return _parse(text, protocol or ProtocolConfig(), stop)
    except Exception as exc:  # defensive: model text must never crash the rollout
        return _error("internal", f"The tool call could not be parsed ({type(exc).__name__}).")


def _parse(text: str, protocol: ProtocolConfig, stop: str | None) -> ToolCall | ParseError | None:
    if not isinstance(text, str):
        return _error("invalid", "The tool call is not text.")
    if stop in stop_sequences(protocol) and not text.endswith(stop):
        text = text + stop  # the sampler dropped the closing tag it stopped at
    tools = protocol.tools
    names = ", ".join(f"<{t}>" for t in tools)
    # The last closing tag of a known tool marks the last complete call.
    close_pos, tool = -1, None
    for t in tools:
        pos = text.rfind(f"</{t}>")
        if pos > close_pos:
            close_pos, tool = pos, t
    if tool is not None:
        open_tag, close_tag = f"<{tool}>", f"</{tool}>"
        open_pos = text.rfind(open_tag, 0, close_pos)
        if open_pos < 0:
            return _error("unopened", f"Found {close_tag} without a matching {open_tag}.", tool)
        body_start = open_pos + len(open_tag)
        body = text[body_start:close_pos]
        for t in tools:
            if f"<{t}>" in body or f"</{t}>" in body:
                return _error(
                    "nested",
                    f"Tool calls cannot be nested: <{t}> appears inside <{tool}>. Make one call at a time.",
                    tool,
                )
        if len(body) > protocol.max_body_chars:
            return _error(
                "too_long",
                f"The <{tool}> call is {len(body)} characters long; the limit is {protocol.max_body_chars}.",
                tool,
            )
        if not body.strip():
            return _error("empty", f"The <{tool}> call is empty; write the {_what(tool)} between {open_tag} and "
                                   f"{close_tag}.", tool)
        return ToolCall(tool=tool, body=body, start=open_pos, end=close_pos + len(close_tag))
    # No complete call: an opening tag without its closing tag, or an unknown tool?
    last_open, open_tool = -1, None
    for t in tools:
        pos = text.rfind(f"<{t}>")
        if pos > last_open:
            last_open, open_tool = pos, t
    if open_tool is not None:
        return _error(
            "unclosed",
            f"The <{open_tool}> call is not closed; end it with </{open_tool}>.",
            open_tool,
        )
    return _unknown_tag(text, protocol, names)


def _unknown_tag(text: str, protocol: ProtocolConfig, names: str) -> ParseError | None:
    """A call-like ``<x>…</x>`` at the very end of the text, with an unknown name ``x``."""
    tail = text[-(protocol.max_body_chars + 256):].rstrip()
    if not tail.endswith(">"):
        return None
    m = None
    for m in _TAG_RE.finditer(tail[-40:]):
        pass
    if m is None or m.end() != len(tail[-40:]) or not m.group(0).startswith("</"):
        return None
    name = m.group(1)
    if name in protocol.non_tool_tags or name in protocol.tools:
        return None
    if f"<{name}>" not in tail:
        return None
    return _error("unknown_tool", f"Unknown tool <{name}>; the available tools are {names}.", name)


def _what(tool: str) -> str:
    return {"python": "code", "search": "query"}.get(tool, "input")
