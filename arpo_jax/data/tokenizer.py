"""Tokenizer loading (local directories only, never the hub) and the check of an exported one.

``transformers`` is imported inside the functions: importing ``arpo_jax.data`` stays light.
"""

from __future__ import annotations

from pathlib import Path


def load_tokenizer(path: str | Path):
    """``AutoTokenizer`` of directory ``path`` (hub names are not fetched); a tokenizer without
    a pad token pads with its EOS token."""
    from transformers import AutoTokenizer

    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(path)!r} does not exist (hub names are not fetched)")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_exported_tokenizer(tokenizer, path: str | Path, sample: str) -> str | None:
    """A warning when ``AutoTokenizer`` reloads the exported tokenizer so that it tokenizes
    ``sample`` differently (e.g. transformers picking the architecture's own tokenizer class
    for a custom tokenizer saved beside a qwen2 config.json)."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(path))
    ids = [tok(sample, add_special_tokens=False)["input_ids"] for tok in (tokenizer, reloaded)]
    if ids[0] == ids[1]:
        return None
    return (f"warning: the tokenizer exported to {path} reloads as {type(reloaded).__name__} and tokenizes "
            f"differently from the training tokenizer ({type(tokenizer).__name__}); load it with that class")
