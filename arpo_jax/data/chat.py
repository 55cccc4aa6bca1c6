"""Rendering an example's messages with a tokenizer's chat template.

The prompt is rendered to text with ``add_generation_prompt=True`` and then encoded with
``add_special_tokens=False``: the template already writes any BOS token it wants, so encoding
must not add a second one. Works with any ``transformers`` ``PreTrainedTokenizerBase`` that
has a ``chat_template``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .records import Example, Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """A rendered prompt: its text and token ids."""

    example_id: str
    text: str
    token_ids: list[int]


def _messages(item: Example | Sequence[Message]) -> list[Message]:
    return list(item.messages) if isinstance(item, Example) else list(item)


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    item: Example | Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> str:
    """The chat-template text of an example's messages (ends with the assistant header).

    ``template_kwargs`` go to the template (e.g. ``enable_thinking=False`` for Qwen3).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template")
    text = tokenizer.apply_chat_template(
        _messages(item), tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    item: Example | Sequence[Message],
    *,
    max_length: int | None = None,
    **template_kwargs: Any,
) -> EncodedPrompt:
    """Renders and tokenizes one prompt; raises if it is longer than ``max_length`` tokens."""
    text = render_prompt(tokenizer, item, **template_kwargs)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    example_id = item.id if isinstance(item, Example) else ""
    if max_length is not None and len(ids) > max_length:
        raise ValueError(
            f"prompt {example_id or '<messages>'} has {len(ids)} tokens > max_length {max_length}"
        )
    return EncodedPrompt(example_id, text, ids)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_length: int | None = None,
    drop_long: bool = False,
    **template_kwargs: Any,
) -> list[EncodedPrompt]:
    """Encodes many prompts; with ``drop_long`` the ones over ``max_length`` are left out."""
    out = []
    for ex in examples:
        enc = encode_prompt(tokenizer, ex, **template_kwargs)
        if max_length is not None and len(enc.token_ids) > max_length:
            if drop_long:
                continue
            raise ValueError(f"prompt {ex.id} has {len(enc.token_ids)} tokens > max_length {max_length}")
        out.append(enc)
    return out
