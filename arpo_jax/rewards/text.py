"""Answer text utilities: SQuAD normalisation, token F1 / exact match, ``\\boxed{}`` extraction.

``qa_f1_score`` is the F1 of the ARPO release (SQuAD normalisation, HotpotQA's yes/no rule,
best over a list of references). ``release_boxed_answer`` reproduces the release's
extraction of the last ``\\boxed`` including its quirks; ``last_boxed`` is a robust version
used by the other rewards.

``normalize_answer`` / ``qa_f1_score`` / ``qa_em_score`` are the release's SQuAD scoring, kept
as released for the faithful ``arpo_f1`` reward: ASCII punctuation only, whitespace tokens, and
a reference made of an article (``"A"``) normalises to ``""``, so F1 scores ``"A"`` vs ``"A"``
as 0 and EM matches it with any empty answer. The evaluation uses ``scoring`` instead.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_YES_NO = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop ASCII punctuation, articles and extra spaces.

    Note the consequence for math: ``"-1"`` and ``"1"`` both become ``"1"``, and
    ``"\\frac{1}{2}"`` becomes ``"frac12"``.
    """
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _refs(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def qa_f1_score(prediction: str, references: str | Sequence[str]) -> float:
    """Best token F1 of ``prediction`` against any reference (0.0 when nothing matches).

    As in the release (and HotpotQA's evaluator), a prediction or reference that normalises
    to ``yes``/``no``/``noanswer`` only scores when both are equal.
    """
    pred = normalize_answer(prediction)
    best = 0.0
    for ref in _refs(references):
        gold = normalize_answer(ref)
        if (pred in _YES_NO or gold in _YES_NO) and pred != gold:
            continue
        p_tok, g_tok = pred.split(), gold.split()
        same = sum((Counter(p_tok) & Counter(g_tok)).values())
        if same == 0:
            continue
        precision, recall = same / len(p_tok), same / len(g_tok)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def qa_em_score(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0.

    SQuAD's EM, with its flaw: ``""`` matches the reference ``"A"`` (both normalise to ``""``).
    Not used by the rewards or the evaluation (see ``scoring.eval_em_score``).
    """
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in _refs(references)))


def _balanced_from(text: str, start: int) -> int | None:
    """Index of the first ``}`` that brings the brace depth counted from ``start`` back to 0."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def release_boxed_answer(answer_block: str) -> str:
    """The release's ``remove_boxed(last_boxed_only_string(x))``; raises ``ValueError`` on failure.

    Quirks kept: if ``"\\boxed "`` (with a space) occurs anywhere, the answer is the text after
    its last occurrence up to the next ``$``; otherwise the span from the last ``\\boxed`` to the
    brace that balances the braces counted from there, which must be exactly ``\\boxed{...}``.
    """
    if "\\boxed " in answer_block:
        return answer_block.split("\\boxed ")[-1].split("$")[0]
    idx = answer_block.rfind("\\boxed")
    if idx < 0:
        idx = answer_block.rfind("\\fbox")
        if idx < 0:
            raise ValueError("no \\boxed in the answer")
    end = _balanced_from(answer_block, idx)
    if end is None:
        raise ValueError("unbalanced braces after \\boxed")
    span = answer_block[idx : end + 1]
    if not span.startswith("\\boxed{") or not span.endswith("}"):
        raise ValueError(f"not a \\boxed{{...}} span: {span[:40]!r}")
    return span[len("\\boxed{") : -1]


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None."""
    for m in reversed(list(_BOXED.finditer(text))):
        end = _balanced_from(text, m.end() - 1)
        if end is not None:
            return text[m.end() : end].strip()
    return None


_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_final_answer(text: str) -> str | None:
    """The final answer of a trajectory.

    The last ``\\boxed{}`` of the last ``<answer>`` block; without a box, that block's text;
    without an answer block, the last ``\\boxed{}`` anywhere; otherwise None.
    """
    blocks = _ANSWER_BLOCK.findall(text)
    if blocks:
        boxed = last_boxed(blocks[-1])
        return boxed if boxed is not None else (blocks[-1].strip() or None)
    return last_boxed(text)
