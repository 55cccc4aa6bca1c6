"""The ARPO system prompt and message building.

The released parquet files carry a system prompt in which ``\\boxed`` was written as
``"\\boxed"`` inside a Python (non-raw) string, so ``\\b`` became a backspace byte: the
text reads ``\\x08oxed{answer here}``. By default this module fixes it to ``\\boxed``;
``byte_exact=True`` keeps the released bytes (for a faithful reproduction).
"""

from __future__ import annotations

from .records import Message

ARPO_SYSTEM_PROMPT_RAW: str = (
    "You are a helpful assistant that can solve the given question step by step with the help "
    "of the wikipedia search tool and python interpreter tool. Given a question, you need to "
    "first think about the reasoning process in the mind and then provide the answer. During "
    "thinking, you can invoke the wikipedia search tool to search and python interpreter tool "
    "to calculate the math problem for fact information about specific topics if needed. The "
    "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags respectively, and the search query and result are enclosed within <search> </search> "
    "and <result> </result> tags respectively. For example, <think> This is the reasoning "
    "process. </think> <search> search query here </search> <result> search result here "
    "</result> <think> This is the reasoning process. </think> <python> python code here "
    "</python> <result> python interpreter result here </result> <think> This is the reasoning "
    "process. </think> <answer> The final answer is \\[ \x08oxed{answer here} \\] </answer>. In "
    "the last part of the answer, the final exact answer is enclosed within \x08oxed{} with "
    "latex format."
)
"""The system prompt exactly as released (with two ``\\x08`` bytes)."""

ARPO_SYSTEM_PROMPT: str = ARPO_SYSTEM_PROMPT_RAW.replace("\x08oxed", "\\boxed")
"""The same prompt with ``\\boxed`` restored (the default)."""

# Escapes that a non-raw Python string turns into control characters inside LaTeX.
_LATEX_ESCAPE_REPAIRS: tuple[tuple[str, str], ...] = (
    ("\x08oxed", "\\boxed"),
    ("\x0crac", "\\frac"),
)


def arpo_system_prompt(byte_exact: bool = False) -> str:
    """The ARPO system prompt; ``byte_exact=True`` keeps the released ``\\x08oxed`` bytes."""
    return ARPO_SYSTEM_PROMPT_RAW if byte_exact else ARPO_SYSTEM_PROMPT


def fix_system_prompt(text: str) -> str:
    """Replaces the ``\\x08oxed`` corruption with ``\\boxed``."""
    return text.replace("\x08oxed", "\\boxed")


def repair_latex_escapes(text: str) -> str:
    """Fixes ``\\x08oxed`` and ``\\x0crac`` (a lost ``\\b`` / ``\\f``) anywhere in a text.

    25 questions of ``train_10k`` and 2 of ``aime25`` contain such bytes; most of them are a
    broken ``\\frac``. Other control bytes are left alone because their intent is unclear.
    """
    for bad, good in _LATEX_ESCAPE_REPAIRS:
        text = text.replace(bad, good)
    return text


def build_messages(question: str, system_prompt: str | None) -> list[Message]:
    """``[system, user]`` messages for a bare question (no system message when it is None)."""
    messages: list[Message] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    return messages
