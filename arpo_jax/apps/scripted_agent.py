"""A scripted stochastic agent: a word-level tokenizer (byte-level BPE with the words as added
tokens) and a real transformer whose weights make it exactly a bigram model. The rollout
tests, the eval and training end-to-end tests and ``arpo-jax bench rollout`` run on it
(``tests/rollout/scripted.py`` re-exports this module).

The attention and MLP outputs are zeroed and the embeddings are orthogonal, so the final
hidden state is sqrt(D)·e_token and the lm_head maps it to log p(next | token): sampling at
temperature 1 follows ``TRANSITIONS`` exactly, entropies are known in closed form, and the
model writes real tool calls (``<python>print(6*7)</python>``) that the real sandboxed tool
answers. Gradient updates then make it context-dependent like any transformer.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from arpo_jax.models import ModelConfig, create_model, save_hf
from arpo_jax.sampling.stops import bytes_to_unicode

EOS = "<|endoftext|>"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] | lower }}{% endfor %}{{ 'Q' }}"  # every prompt ends in Q
WORDS = ("Q", "<think>", "</think>", "hmm", "ok", "so", "<python>", "print(6*7)", "</python>", " <result>\n",
         "\n</result>", "42", "<answer>", "\\boxed{42}", "\\boxed{41}", "</answer>", "a", "b", "c", "d")
# next-token distributions; other words go to EOS (byte tokens: uniform, never reached)
TRANSITIONS = {
    "Q": {"<think>": 1.0},
    "<think>": {"hmm": 0.5, "ok": 0.3, "so": 0.2},
    "hmm": {"</think>": 0.7, "so": 0.3},
    "ok": {"</think>": 1.0},
    "so": {"</think>": 1.0},
    "</think>": {"<python>": 0.7, "<answer>": 0.3},
    "<python>": {"print(6*7)": 1.0},
    "print(6*7)": {"</python>": 1.0},
    "\n</result>": {"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.1, "<answer>": 0.2, "<python>": 0.1},
    "a": {"<answer>": 0.6, "<python>": 0.4},
    "b": {"<answer>": 0.8, "b": 0.2},
    "c": {"<answer>": 1.0},
    "d": {"<python>": 1.0},
    "<answer>": {"\\boxed{42}": 0.5, "\\boxed{41}": 0.5},
    "\\boxed{42}": {"</answer>": 1.0},
    "\\boxed{41}": {"</answer>": 1.0},
    "</answer>": {EOS: 1.0},
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    b2u = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={b2u[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in WORDS])
    tok.add_special_tokens([AddedToken(EOS, special=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def entropy_after(word: str) -> float:
    p = np.asarray(list(TRANSITIONS.get(word, {EOS: 1.0}).values()))
    return float(-(p * np.log(p)).sum())


def build_model(tok, *, hidden: int = 288):
    vocab = len(tok)
    assert hidden >= vocab, (hidden, vocab)
    cfg = ModelConfig(family="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=hidden // 4, tie_word_embeddings=False)
    model = create_model(cfg, seed=0)
    for layer in model.layers:
        layer.attn.o_proj[...] = jnp.zeros_like(layer.attn.o_proj[...])
        layer.mlp.down_proj[...] = jnp.zeros_like(layer.mlp.down_proj[...])
    emb = np.eye(vocab, hidden, dtype=np.float32)  # RMSNorm(e_a) = sqrt(D)·e_a
    head = np.zeros((hidden, vocab), np.float32)
    ids = lambda w: tok.convert_tokens_to_ids(w)  # noqa: E731
    for word in WORDS:  # byte tokens get no row: a dense EOS column would make the model fragile under updates
        a = ids(word)
        for b, p in TRANSITIONS.get(word, {EOS: 1.0}).items():
            head[a, ids(b)] = (math.log(p) + 30.0) / math.sqrt(hidden)
    model.embed[...] = jnp.asarray(emb)
    model.lm_head[...] = jnp.asarray(head)
    return model, cfg


def prompt_ids(tok) -> list[int]:
    return tok.encode("Q", add_special_tokens=False)


def save_scripted(path: Path) -> Path:
    """The scripted model + tokenizer as an HF checkpoint directory."""
    tok = build_tokenizer()
    model, cfg = build_model(tok)
    save_hf(model, cfg, path, tokenizer=tok)
    return path


def write_questions(path: Path, n: int) -> Path:
    """n copies of "what is 6*7?" (answer 42) as an eval-style JSONL prompt file."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": f"what is 6*7? (#{i})", "answer": "42"}) + "\n"
                            for i in range(n)))
    return path
