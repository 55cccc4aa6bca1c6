"""A tiny BPE tokenizer with a chat template and tiny tool-trace SFT data, built offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SYSTEM = "Use <python> to compute."


def trace_texts(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, assistant text with a tool call and its <result>, answer) triples."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        q = f"What is {a} plus {b}?"
        s = a + b
        resp = (f"<think>add {a} and {b}</think><python>print({a}+{b})</python> <result>\n{s}\n</result>"
                f"<answer>\\boxed{{{s}}}</answer>")
        out.append((q, resp, str(s)))
    return out


def build_tokenizer(path: Path, vocab_size: int = 400):
    """Trains a byte-level BPE on generated traces and saves a PreTrainedTokenizerFast to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [SYSTEM] + [q + " " + r for q, r, _ in trace_texts(300, seed=123)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[1:])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def write_sharegpt(path: Path, n: int, seed: int = 0) -> Path:
    """ARPO-style ShareGPT JSONL: system, human, gpt (with an inline <result>)."""
    with open(path, "w") as f:
        for q, r, _ in trace_texts(n, seed):
            conv = [{"from": "system", "value": SYSTEM}, {"from": "human", "value": q}, {"from": "gpt", "value": r}]
            f.write(json.dumps({"conversations": conv}) + "\n")
    return path


def sft_yaml(path: Path, tok_dir: Path, data: Path, out: Path, model: dict | None = None, **train) -> Path:
    """A tiny-model SFT config file (overrides go on the command line, in ``model`` or in ``train``)."""
    cfg = {
        "model": model or {"preset": "qwen2.5-0.5b", "tokenizer": str(tok_dir), "mesh": [1, 1, 1],
                           "config": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
                                      "num_kv_heads": 2, "head_dim": 8, "tie_word_embeddings": True}},
        "data": {"train_files": [str(data)], "min_bucket": 0, "bucket_window": 4},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"steps": 10, "batch_size": 4, "micro_batches": 2, "max_len": 80, "seed": 0, "out_dir": str(out),
                  "save_every": 2, "keep": 3, "export_at_end": False, **train},
        "logging": {"progress": False, "tensorboard": False},
    }
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path
