"""A hand-made byte-level BPE tokenizer (Qwen/Llama-3 style) for stop-string tests; no download.

Its merges make ``</python>`` several tokens and create tokens that glue a stop string to its
neighbours: ``)</`` (preceding text + the start of ``</python>``) and ``>\\n`` (the end of it +
a newline).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from arpo_jax.sampling.stops import bytes_to_unicode

B2U = bytes_to_unicode()
EOS = "<|endoftext|>"
# Each word becomes a token (and so do its prefixes), merged left to right.
WORDS = (")</", "</", "python", "py", "thon", ">\n", "search", "</se", "arch>", "hello", "world",
         "</pyth", "ok", "x=1", " print", "answer", "ans", "wer>")


def _u(text: str) -> str:
    return "".join(B2U[b] for b in text.encode("utf-8"))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {B2U[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        chars = [_u(c) for c in word]
        cur = chars[0]
        for c in chars[1:]:
            if cur + c not in vocab:
                merges.append((cur, c))
                vocab[cur + c] = len(vocab)
            cur = cur + c
    # "thon" must also merge from "th"+"on" pieces: add those paths explicitly
    for a, b in (("t", "h"), ("o", "n"), ("th", "on"), ("py", "thon"), ("arch", ">")):
        ua, ub = _u(a), _u(b)
        for part in (ua, ub):
            if part not in vocab:
                vocab[part] = len(vocab)
        if ua + ub not in vocab:
            vocab[ua + ub] = len(vocab)
        if (ua, ub) not in merges:
            merges.append((ua, ub))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def ids_of(tokenizer, pieces: list[str]) -> list[int]:
    """Token ids of the given token strings (plain text, e.g. ``")</"``)."""
    ids = []
    for p in pieces:
        i = tokenizer.convert_tokens_to_ids(p if p == EOS else _u(p))
        assert i is not None and i != tokenizer.unk_token_id, p
        ids.append(i)
    return ids
