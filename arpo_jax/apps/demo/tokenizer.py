"""The demo's tokenizer: a byte-level BPE trained on the generated text, saved as an HF directory.

* The merges are learnt on isolated pieces (syllables = consonants followed by vowels, other
  letter runs, single digits, whitespace runs, punctuation runs) and applied with Qwen2's own
  pre-tokenizer, so no token joins a space or punctuation to a word, and no merge crosses a
  syllable boundary (none joins a vowel to the next consonant): a generated name is exactly
  one token per syllable wherever it occurs (after a space, after ``{``, at the start of a
  call), and copying it from the question or a tool result is a plain token copy. Held-out
  names are made of the same syllable tokens as training names. Because the
  normaliser and pre-tokenizer are Qwen2's, ``AutoTokenizer`` loading the tokenizer beside an
  exported qwen2 checkpoint (where transformers 5 rebuilds a ``Qwen2Tokenizer`` from the
  vocabulary and merges) tokenizes exactly as the saved tokenizer does.
* The tool tags (``<think>`` ... ``</answer>``) are added tokens, one token each, not special:
  they are decoded as text, and the stop strings ``</python>`` / ``</search>`` are single
  tokens whose bytes the on-device stop matcher (``arpo_jax.sampling.stops``) sees directly.
* Chat special tokens ``<|endoftext|>`` (pad), ``<|im_start|>`` and ``<|im_end|>`` (EOS), and a
  Qwen-style chat template whose default system message is the demo's ``SYSTEM_PROMPT``.

The saved directory loads offline with ``transformers.AutoTokenizer.from_pretrained(dir)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from arpo_jax.apps.demo.tasks import SYSTEM_PROMPT

TOOL_TAGS = ("<think>", "</think>", "<python>", "</python>", "<search>", "</search>",
             "<result>", "</result>", "<answer>", "</answer>")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
_CONS = "b-df-hj-np-tv-zB-DF-HJ-NP-TV-Z"
PRETOKENIZE_PATTERN = (
    rf"[{_CONS}]*[aeiouAEIOU]+"  # every word is cut into syllables (consonants + vowels), so no merge
    r"|\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"  # joins a vowel to a following consonant; the rest as usual
)

QWEN2_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer (``transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX``)."""


def _jinja_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n' + " + _jinja_literal(SYSTEM_PROMPT) + " + '<|im_end|>\\n' -}}"
    "{%- set rest = messages -%}"
    "{%- endif -%}"
    "{%- for m in rest -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen2.5-style ChatML without tool schemas; no system message -> the demo's system prompt."""


def _strip_tags(text: str) -> str:
    for tag in TOOL_TAGS + SPECIAL_TOKENS:
        text = text.replace(tag, " ")
    return text


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024):
    """Trains the BPE on ``texts`` and saves a ``PreTrainedTokenizerFast`` to ``out_dir``.

    Args:
        texts: training text (prompts, corpus documents, traces); tags are not learnt as merges.
        out_dir: the HF tokenizer directory to write.
        vocab_size: BPE vocabulary size including the 256 bytes and the special tokens
            (the tool tags are added on top).

    Returns:
        The tokenizer, as ``AutoTokenizer.from_pretrained(out_dir)`` loads it.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator((_strip_tags(t) for t in texts), trainer)
    # Apply the merges with Qwen2's own normaliser and pre-tokenizer: ``AutoTokenizer`` rebuilds a
    # ``Qwen2Tokenizer`` that way for a checkpoint whose config.json says qwen2 (transformers 5),
    # so the tokenizer saved beside an exported model must tokenize identically. The merges were
    # learnt on isolated pieces, so none joins a space or punctuation to a word: a word still
    # gets the same tokens after a space, after "{" or at the start of a call.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in TOOL_TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   additional_special_tokens=[SPECIAL_TOKENS[1]])
    fast.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))


def eos_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end a response: ``<|im_end|>`` and ``<|endoftext|>``."""
    return tuple(tokenizer.convert_tokens_to_ids(t) for t in (EOS_TOKEN, PAD_TOKEN))


def check_tokenizer(tokenizer, sample: str) -> list[str]:
    """Problems found (empty when fine): tags not single tokens, a lossy round trip of ``sample``."""
    problems = []
    for tag in TOOL_TAGS + SPECIAL_TOKENS:
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            problems.append(f"{tag!r} is {len(ids)} tokens")
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if back != sample:
        problems.append(f"round trip changed {sample[:60]!r} into {back[:60]!r}")
    return problems
