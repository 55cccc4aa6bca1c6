"""Tool-call parsing: examples, malformed calls, and hypothesis properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arpo_jax.tools import (
    ParseError,
    ProtocolConfig,
    ToolCall,
    format_observation,
    parse_tool_call,
    stop_sequences,
)

P = ProtocolConfig()
TAGS = ["<python>", "</python>", "<search>", "</search>"]


def test_simple_calls():
    call = parse_tool_call("<think>compute</think>\n<python>print(1+1)</python>")
    assert call == ToolCall("python", "print(1+1)", call.start, call.end)
    call = parse_tool_call("<search> capital of France </search>")
    assert isinstance(call, ToolCall) and call.tool == "search" and call.body == " capital of France "


def test_last_complete_call_wins():
    text = "<python>a=1</python> <result>\n1\n</result> <search>q</search>"
    call = parse_tool_call(text)
    assert (call.tool, call.body) == ("search", "q")
    assert text[call.start:call.end] == "<search>q</search>"


def test_stop_sequence_stripped_by_sampler():
    call = parse_tool_call("<think>x</think><python>print(2)", stop="</python>")
    assert (call.tool, call.body) == ("python", "print(2)")


def test_no_call():
    assert parse_tool_call("<think>done</think><answer>\\boxed{3}</answer>") is None
    assert parse_tool_call("") is None
    assert parse_tool_call("plain text < > </ >") is None


@pytest.mark.parametrize("text,reason", [
    ("<python>print(1)", "unclosed"),
    ("<python>   \n </python>", "empty"),
    ("<python></python>", "empty"),
    ("<python>x <search>q</search> y</python>", "nested"),
    ("<python><python>1</python></python>", "nested"),
    ("print(1)</python>", "unopened"),
    ("<bash>ls -la</bash>", "unknown_tool"),
    ("<python>" + "x" * (P.max_body_chars + 1) + "</python>", "too_long"),
])
def test_malformed_calls_explain(text, reason):
    err = parse_tool_call(text)
    assert isinstance(err, ParseError), err
    assert err.reason == reason
    assert err.message and "\n" not in err.message


def test_non_string_input_is_an_error_not_an_exception():
    assert isinstance(parse_tool_call(None), ParseError)  # type: ignore[arg-type]
    assert isinstance(parse_tool_call(b"<python>1</python>"), ParseError)  # type: ignore[arg-type]


def test_observation_format_is_the_release_one():
    assert format_observation("42") == " <result>\n42\n</result>"
    custom = ProtocolConfig(observation_template="<obs>{text}</obs>")
    assert format_observation("{text}", custom) == "<obs>{text}</obs>"
    assert stop_sequences() == ("</python>", "</search>")


# ---- properties -------------------------------------------------------------------------

_alphabet = st.sampled_from(list(string.printable) + ["é", "中", "\u2028", "\x00", "<", ">", "/"])
_tag_soup = st.lists(st.one_of(st.text(_alphabet, max_size=12), st.sampled_from(
    TAGS + ["<think>", "</think>", "<answer>", "</answer>", "<result>", "</result>", "<bash>", "</bash>",
            "<python", "python>", "</py", "<<python>>", "<Python>", "</search >"])), max_size=40).map("".join)


def _no_tags(s: str) -> bool:
    return not any(t in s for t in TAGS)


_body = st.text(_alphabet, min_size=1, max_size=300).filter(lambda s: s.strip() and _no_tags(s))
_plain = st.text(_alphabet, max_size=200).filter(_no_tags)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_tag_soup, st.text(max_size=500)), st.sampled_from([None, "</python>", "</search>", "</x>"]))
def test_parser_never_raises(text, stop):
    out = parse_tool_call(text, stop=stop)
    assert out is None or isinstance(out, (ToolCall, ParseError))
    if isinstance(out, ToolCall):
        full = text + stop if stop in stop_sequences() and not text.endswith(stop) else text
        assert full[out.start:out.end] == f"<{out.tool}>{out.body}</{out.tool}>"
        assert out.body.strip() and _no_tags(out.body)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(_plain, st.sampled_from(["python", "search"]), _body), min_size=1, max_size=4),
       _plain.filter(lambda s: "<" not in s), st.booleans())
def test_well_formed_calls_are_extracted_exactly(segments, trailing, strip_stop):
    text = "".join(f"{pre}<{tool}>{body}</{tool}>" for pre, tool, body in segments)
    _, tool, body = segments[-1]
    if strip_stop:
        out = parse_tool_call(text[: -len(f"</{tool}>")], stop=f"</{tool}>")
    else:
        out = parse_tool_call(text + trailing)
    assert isinstance(out, ToolCall), out
    assert (out.tool, out.body) == (tool, body)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=3), st.text(_alphabet, max_size=50).filter(_no_tags))
def test_absurd_lengths_are_rejected_quickly(factor, filler):
    body = (filler or "x") * (P.max_body_chars * factor // max(1, len(filler or "x")) + 1)
    out = parse_tool_call(f"<python>{body}</python>")
    assert isinstance(out, ParseError)
    assert out.reason in ("too_long", "empty")
