"""The evaluation's answer scoring: exact match and token F1 with no free points, Unicode-aware.

The release's SQuAD functions (``text.normalize_answer`` / ``text.qa_f1_score``, used by the
faithful ``arpo_f1`` reward) stay as released; this module is what the evaluation and the
``qa_em`` / ``qa_f1`` / ``math`` rewards use. ``docs/scoring.md`` sets the two side by side.

* Both sides are first reduced to the content of their last balanced ``\\boxed{}`` when they
  have one (``unbox``): a few released golds read ``The final answer is \\(\\boxed{D}\\)``.
* Normalisation (``normalize_eval``): NFKC (full-width forms, ``\\xa0``), case folding, ASCII
  punctuation and every Unicode punctuation character (categories ``P*``) removed, the English
  articles a/an/the removed, whitespace collapsed.
* Tokens (``eval_tokens``): whitespace-separated words, except that every CJK ideograph, kana
  and hangul character is a token of its own (``北京大学`` -> 北, 京, 大, 学).
* A prediction that normalises to nothing never matches.
* A reference that normalises to nothing (``"A"``, ``"The"``) is compared on its raw form
  (``raw_form``), and so is the prediction against it; an empty raw form never matches.
* F1 keeps HotpotQA's rule: a yes/no/noanswer side only scores when both sides are equal.
* A reference with unbalanced braces is a truncated release gold (``1}^N``): EM/F1 use its text
  as given (braces are punctuation); math equivalence accepts only a verbatim match
  (``math_matches``), because math-verify parses ``1}^N`` as ``1``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

from .math_equiv import math_equal
from .text import last_boxed

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_YES_NO = ("yes", "no", "noanswer")
_CJK = (
    "\u1100-\u11ff"  # hangul jamo
    "\u2e80-\u2fdf"  # CJK and Kangxi radicals
    "\u3005\u3007"  # 々 and 〇
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3100-\u312f\u31a0-\u31bf"  # bopomofo
    "\u3130-\u318f"  # hangul compatibility jamo
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (and extension A)
    "\uac00-\ud7af"  # hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-G and compatibility supplement
)
_TOKEN = re.compile(f"[{_CJK}]|[^{_CJK}]+")

RAW_FORM = "raw_form"
EMPTY_GOLD = "empty_gold"
BOXED_GOLD = "boxed_gold"
UNBALANCED_BRACES = "unbalanced_braces"


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _fold(s: str) -> str:
    """NFKC then case folding: ``ＡＢＣ`` -> ``abc``, ``Straße`` -> ``strasse``."""
    return unicodedata.normalize("NFKC", s).casefold()


def unbox(s: str) -> str:
    """The content of the last balanced ``\\boxed{}`` / ``\\fbox{}`` of ``s``, else ``s``."""
    boxed = last_boxed(s)
    return s if boxed is None else boxed


def normalize_eval(s: str) -> str:
    """The evaluation's normalisation: NFKC, case fold, drop punctuation and articles.

    ``"北京。"`` -> ``"北京"``, ``"ＡＢＣ"`` -> ``"abc"``, ``"The Eiffel Tower!"`` -> ``"eiffel
    tower"``, ``"A"`` -> ``""``.
    """
    s = "".join(ch for ch in _fold(s) if not _is_punct(ch))
    return " ".join(_ARTICLES.sub(" ", s).split())


def raw_form(s: str) -> str:
    """NFKC, case folded, whitespace collapsed, punctuation stripped at both ends.

    The form a reference that normalises to nothing is compared on: ``"A"`` -> ``"a"``,
    ``"(A)."`` -> ``"a"``. Text made of punctuation only keeps it (``"?!"`` stays ``"?!"``).
    """
    text = " ".join(_fold(s).split())
    start, end = 0, len(text)
    while start < end and (_is_punct(text[start]) or text[start].isspace()):
        start += 1
    while end > start and (_is_punct(text[end - 1]) or text[end - 1].isspace()):
        end -= 1
    return text[start:end] or text


def eval_tokens(normalized: str) -> list[str]:
    """Tokens of a normalised answer: whitespace words, each CJK character its own token.

    ``"2024年10月"`` -> ``["2024", "年", "10", "月"]``.
    """
    return [tok for word in normalized.split() for tok in _TOKEN.findall(word)]


def _forms(prediction: str, reference: str) -> tuple[str, str, bool]:
    """(prediction, reference, raw) in the form they are compared on (see the module doc)."""
    pred, ref = unbox(prediction), unbox(reference)
    gold = normalize_eval(ref)
    if gold:
        return normalize_eval(pred), gold, False
    return raw_form(pred), raw_form(ref), True


def _refs(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def eval_em_score(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the prediction equals a reference in the evaluation's form, else 0.0.

    An empty prediction (after normalisation, or in raw form against a raw-form reference)
    never matches.
    """
    for ref in _refs(references):
        pred, gold, _ = _forms(prediction, ref)
        if pred and pred == gold:
            return 1.0
    return 0.0


def token_f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    """Harmonic mean of token precision and recall (multiset overlap); 0.0 when either is empty."""
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def eval_f1_score(prediction: str, references: str | Sequence[str]) -> float:
    """Best token F1 (``eval_tokens``) of the prediction over the references.

    HotpotQA's rule is kept: when either side normalises to yes/no/noanswer, F1 is 1.0 if
    both are equal and 0.0 otherwise.
    """
    best = 0.0
    for ref in _refs(references):
        pred, gold, raw = _forms(prediction, ref)
        if not raw and (pred in _YES_NO or gold in _YES_NO) and pred != gold:
            continue
        best = max(best, token_f1(eval_tokens(pred), eval_tokens(gold)))
    return best


def braces_balanced(s: str) -> bool:
    """Whether ``{``/``}`` and, separately, the escaped ``\\{``/``\\}`` of ``s`` balance.

    False for the truncated release golds ``1}^N``, ``36\\}`` and ``\\frac{d^{2}k``.
    """
    depth = {"": 0, "\\": 0}
    i = 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 2] in ("{", "}", "\\"):
            kind, ch, i = "\\", s[i + 1], i + 2
        else:
            kind, ch, i = "", s[i], i + 1
        if ch in "{}":
            depth[kind] += 1 if ch == "{" else -1
            if depth[kind] < 0:
                return False
    return depth[""] == 0 and depth["\\"] == 0


def reference_flags(reference: str) -> set[str]:
    """The quirks of one reference that the scoring handles (see ``gold_flags``)."""
    flags = set()
    gold = unbox(reference)
    if gold != reference:
        flags.add(BOXED_GOLD)
    if not braces_balanced(gold):
        flags.add(UNBALANCED_BRACES)
    if not normalize_eval(gold):
        flags.add(RAW_FORM if raw_form(gold) else EMPTY_GOLD)
    return flags


def gold_flags(references: str | Sequence[str]) -> tuple[str, ...]:
    """Sorted quirks of a question's references, for the per-question record.

    ``boxed_gold``: reduced to its ``\\boxed{}`` content; ``unbalanced_braces``: truncated, only
    a verbatim math match counts; ``raw_form``: normalises to nothing, scored on its raw form;
    ``empty_gold``: nothing left even in raw form, never matches.
    """
    flags: set[str] = set()
    for ref in _refs(references):
        flags |= reference_flags(ref)
    return tuple(sorted(flags))


def _compact(s: str) -> str:
    return "".join(s.split()).strip("$").lower()


def math_matches(prediction: str, reference: str, timeout_s: float = 5.0) -> bool:
    """Math equivalence of a final answer with one reference, after ``unbox`` of the reference.

    A reference with unbalanced braces only matches verbatim (ignoring spaces, ``$`` and case).
    """
    gold = unbox(reference)
    if not braces_balanced(gold):
        return bool(prediction.strip()) and _compact(prediction) == _compact(gold)
    return math_equal(prediction, gold, timeout_s)
