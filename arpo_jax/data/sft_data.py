"""SFT data: reading multi-turn tool traces and encoding them into tokens with a loss mask.

Three row formats, one JSON object per line of a ``.jsonl`` file (or a JSON array file):

  ShareGPT (the ARPO cold-start data, LLaMA-Factory style)::
      {"conversations": [{"from": "system"|"human"|"gpt"|"observation", "value": "..."}, ...]}
  messages::
      {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}
  trace (this project's own, what the rollout produces: token-in, token-out)::
      {"id": "...", "prompt": [{"role", "content"}, ...],
       "response_segments": [{"text": "...", "kind": "model"|"tool"}, ...], "eos": true}

Loss mask (1 = trained): only model (assistant) text and the end-of-turn marker that closes
an assistant turn. Tool results are masked: tool-role messages, ``kind: "tool"`` segments and
``<result>...</result>`` spans inside assistant text (``tool_result_pattern``, which also takes
the whitespace before ``<result>``, as the rollout inserts ``" <result>\\n...\\n</result>"``).

Encoding mirrors inference: a trace (and a chat whose only assistant turn is the last
message) is the prompt rendered with ``add_generation_prompt=True``, then each response
piece tokenized on its own, then the end-of-turn text. Multi-turn chats are rendered whole
with the chat template and each assistant turn is located in the rendered text. Every piece
is tokenized with ``add_special_tokens=False``. Row numbers in errors are 0-based (the line
of a JSONL file), like every reader in ``arpo_jax.data``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from arpo_jax.data.records import DataError, read_json_rows

logger = logging.getLogger(__name__)

DEFAULT_RESULT_PATTERN = r"\s*<result>.*?(?:</result>|\Z)"
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "observation": "tool", "function": "tool", "tool": "tool"}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("auto", "sharegpt", "messages", "trace")
_MARK = "ARPOJAXENDOFTURNPROBE"


@dataclasses.dataclass(frozen=True)
class SFTRecord:
    """One parsed row: either ``messages`` (chat) or ``prompt`` + ``segments`` (trace)."""

    id: str
    messages: list[dict[str, str]] | None = None
    prompt: list[dict[str, str]] | None = None
    segments: list[tuple[str, str]] | None = None  # (text, "model" | "tool")
    eos: bool = True


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """An encoded example. ``loss_mask[t]`` = 1 when token t is trained (predicted from tokens[:t])."""

    id: str
    tokens: np.ndarray  # int32 [L]
    loss_mask: np.ndarray  # int8 [L]


# ------------------------------------------------------------------------------ reading
def _str_field(d: Any, key: str, path: str, row: int, field: str) -> str:
    if not isinstance(d, dict) or not isinstance(d.get(key), str):
        got = d.get(key) if isinstance(d, dict) else d
        raise DataError(path, row, field, f"expected a string '{key}', got {got!r:.60}")
    return d[key]


def _parse_messages(items: Any, path: str, row: int, field: str, sharegpt: bool) -> list[dict[str, str]]:
    if not isinstance(items, list) or not items:
        raise DataError(path, row, field, "expected a non-empty list of messages")
    out = []
    for j, m in enumerate(items):
        f = f"{field}[{j}]"
        if sharegpt:
            role = _str_field(m, "from", path, row, f)
            if role not in SHAREGPT_ROLES:
                raise DataError(path, row, f + ".from", f"unknown speaker {role!r} (known: {sorted(SHAREGPT_ROLES)})")
            out.append({"role": SHAREGPT_ROLES[role], "content": _str_field(m, "value", path, row, f)})
        else:
            role = _str_field(m, "role", path, row, f)
            if role not in MESSAGE_ROLES:
                raise DataError(path, row, f + ".role", f"unknown role {role!r} (known: {list(MESSAGE_ROLES)})")
            out.append({"role": role, "content": _str_field(m, "content", path, row, f)})
    return out


def parse_row(row: Any, path: str, i: int, fmt: str = "auto") -> SFTRecord:
    """One JSON row → ``SFTRecord``; ``fmt`` "auto" picks the format from the row's keys."""
    if not isinstance(row, dict):
        raise DataError(path, i, "<row>", f"expected a JSON object, got {type(row).__name__}")
    if fmt == "auto":
        fmt = ("sharegpt" if "conversations" in row else "messages" if "messages" in row
               else "trace" if "response_segments" in row else "")
        if not fmt:
            raise DataError(path, i, "<row>", "has none of 'conversations', 'messages', 'response_segments'")
    rid = str(row.get("id", f"{Path(path).name}/{i}"))
    if fmt in ("sharegpt", "messages"):
        key = "conversations" if fmt == "sharegpt" else "messages"
        msgs = _parse_messages(row.get(key), path, i, key, sharegpt=fmt == "sharegpt")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(path, i, key, "no assistant ('gpt') message to train on")
        return SFTRecord(rid, messages=msgs)
    if fmt != "trace":
        raise DataError(path, None, "format", f"unknown SFT data format {fmt!r} (known: {list(FORMATS)})")
    prompt = _parse_messages(row.get("prompt"), path, i, "prompt", sharegpt=False)
    segs = row.get("response_segments")
    if not isinstance(segs, list) or not segs:
        raise DataError(path, i, "response_segments", "expected a non-empty list of {text, kind}")
    segments = []
    for j, s in enumerate(segs):
        text = _str_field(s, "text", path, i, f"response_segments[{j}]")
        kind = s.get("kind", "model")
        if kind not in ("model", "tool"):
            raise DataError(path, i, f"response_segments[{j}].kind", f"expected 'model' or 'tool', got {kind!r}")
        segments.append((text, kind))
    eos = row.get("eos", True)
    if not isinstance(eos, bool):
        raise DataError(path, i, "eos", f"expected true or false, got {eos!r}")
    return SFTRecord(rid, prompt=prompt, segments=segments, eos=eos)


def read_sft_file(path: str | Path, fmt: str = "auto", *, lenient: bool = False) -> list[SFTRecord]:
    """Reads a JSON/JSONL SFT file; a bad row raises ``DataError`` (``lenient``: skipped, counted)."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data file {str(path)!r} does not exist")
    out, bad = [], []
    for i, row in read_json_rows(path):
        try:
            out.append(parse_row(row, str(path), i, fmt))
        except DataError as e:
            if not lenient:
                raise
            bad.append(str(e))
    if bad:
        logger.warning("%s: skipped %d bad row(s); first: %s", path, len(bad), bad[0])
    return out


# ----------------------------------------------------------------------------- encoding
def _render(tokenizer, messages, add_generation_prompt: bool, template_kwargs: dict) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)


def end_of_turn_text(tokenizer, template_kwargs: dict | None = None) -> str:
    """What the chat template writes right after an assistant message (e.g. ``<|im_end|>``).

    Trailing whitespace is dropped (generation stops at the marker). Falls back to the
    tokenizer's EOS token when the template shows nothing after the message.
    """
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK}]
    try:
        text = _render(tokenizer, msgs, False, template_kwargs or {})
        tail = text[text.rindex(_MARK) + len(_MARK):].rstrip()
    except (ValueError, TypeError):
        tail = ""
    return tail or (tokenizer.eos_token or "")


def split_tool_results(text: str, pattern: re.Pattern) -> list[tuple[str, bool]]:
    """Assistant text → (piece, trained) pieces; tool-result spans are untrained."""
    pieces, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            pieces.append((text[pos:m.start()], True))
        if m.end() > m.start():
            pieces.append((m.group(0), False))
        pos = m.end()
    if pos < len(text):
        pieces.append((text[pos:], True))
    return pieces


def record_pieces(rec: SFTRecord, tokenizer, *, eot: str, pattern: re.Pattern,
                  template_kwargs: dict | None = None) -> list[tuple[str, bool]]:
    """An ``SFTRecord`` → ordered (text, trained) pieces whose concatenation is the example."""
    kw = template_kwargs or {}
    if rec.messages is None:
        pieces = [(_render(tokenizer, rec.prompt, True, kw), False)]
        for text, kind in rec.segments:
            pieces += split_tool_results(text, pattern) if kind == "model" else [(text, False)]
        if rec.eos and eot:
            pieces.append((eot, True))
        return pieces
    msgs = rec.messages
    asst = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if asst == [len(msgs) - 1]:  # one final assistant turn: exactly a trace
        trace = SFTRecord(rec.id, prompt=msgs[:-1], segments=[(msgs[-1]["content"], "model")])
        return record_pieces(trace, tokenizer, eot=eot, pattern=pattern, template_kwargs=kw)
    full = _render(tokenizer, msgs, False, kw)
    pieces, cursor = [], 0
    for i in asst:
        content = msgs[i]["content"]
        prefix = _render(tokenizer, msgs[:i], True, kw) if i else ""
        base = len(prefix) if i and full.startswith(prefix) and len(prefix) >= cursor else cursor
        start = full.find(content, base)
        if start < 0:
            raise ValueError(f"assistant message {i} is not rendered verbatim by the chat template")
        end = start + len(content)
        if eot and full.startswith(eot, end):
            end += len(eot)
        pieces.append((full[cursor:start], False))
        pieces += split_tool_results(full[start:start + len(content)], pattern)
        if end > start + len(content):
            pieces.append((full[start + len(content):end], True))
        cursor = end
    pieces.append((full[cursor:], False))
    return [(t, m) for t, m in pieces if t]


def encode_records(records: Sequence[SFTRecord], tokenizer, *, max_len: int, truncate: bool = True,
                   tool_result_pattern: str = DEFAULT_RESULT_PATTERN, template_kwargs: dict | None = None,
                   source: str = "") -> tuple[list[SFTExample], dict[str, int]]:
    """Tokenizes records piece by piece → (examples, counts).

    Longer than ``max_len``: cut to ``max_len`` (``truncate``) or dropped. Examples left with
    no trained token are dropped. counts: examples, truncated, dropped_long, dropped_empty, tokens.
    """
    pattern = re.compile(tool_result_pattern, re.DOTALL)
    eot = end_of_turn_text(tokenizer, template_kwargs)
    all_pieces, owners = [], []
    for k, rec in enumerate(records):
        try:
            pieces = record_pieces(rec, tokenizer, eot=eot, pattern=pattern, template_kwargs=template_kwargs)
        except ValueError as e:
            raise DataError(source or rec.id, None, rec.id, str(e)) from None
        all_pieces += pieces
        owners += [k] * len(pieces)
    ids = tokenizer([t for t, _ in all_pieces], add_special_tokens=False)["input_ids"] if all_pieces else []
    toks: list[list[int]] = [[] for _ in records]
    masks: list[list[int]] = [[] for _ in records]
    for k, (_, trained), piece_ids in zip(owners, all_pieces, ids):
        toks[k] += piece_ids
        masks[k] += [int(trained)] * len(piece_ids)
    counts = dict(examples=0, truncated=0, dropped_long=0, dropped_empty=0, tokens=0)
    out = []
    for rec, t, m in zip(records, toks, masks):
        if len(t) > max_len:
            if not truncate:
                counts["dropped_long"] += 1
                continue
            counts["truncated"] += 1
            t, m = t[:max_len], m[:max_len]
        if not any(m[1:]):  # token 0 is never predicted
            counts["dropped_empty"] += 1
            continue
        out.append(SFTExample(rec.id, np.asarray(t, np.int32), np.asarray(m, np.int8)))
        counts["tokens"] += len(t)
    counts["examples"] = len(out)
    return out, counts


def load_sft_examples(files: Sequence[str], tokenizer, *, max_len: int, fmt: str = "auto", lenient: bool = False,
                      **encode_kwargs) -> tuple[list[SFTExample], dict[str, int]]:
    """Reads and encodes every file (in order) → (examples, summed counts)."""
    if not files:
        raise ValueError("data.train_files is empty: give at least one JSON/JSONL file")
    examples: list[SFTExample] = []
    total: dict[str, int] = {}
    for f in files:
        ex, counts = encode_records(read_sft_file(f, fmt, lenient=lenient), tokenizer, max_len=max_len,
                                    source=str(f), **encode_kwargs)
        examples += ex
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return examples, total
