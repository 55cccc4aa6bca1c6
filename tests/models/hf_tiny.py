"""Tiny random transformers models of each family, saved to disk for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

FAMILIES = ("qwen2", "qwen3", "llama")


def tiny_hf_config(family: str, *, tie: bool = False, vocab: int = 160):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=tie, rms_norm_eps=1e-6)
    if family == "qwen2":
        return transformers.Qwen2Config(rope_theta=10000.0, **common)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=24, rope_theta=1e6, **common)
    if family == "llama":
        return transformers.LlamaConfig(
            rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            **common)
    raise ValueError(family)


def tiny_hf_model(family: str, *, tie: bool = False, seed: int = 0):
    """A random-weight HF causal LM; every tensor (norms, biases too) is randomised."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_hf_config(family, tie=tie))
    model = model.to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def save_tiny(family: str, path: Path, *, tie: bool = False, seed: int = 0):
    model = tiny_hf_model(family, tie=tie, seed=seed)
    model.save_pretrained(str(path))
    return model
