"""Greedy decoding matches transformers ``generate`` token for token (tiny random Qwen2, Qwen3
and Llama loaded through ``load_hf``); sampled log-probs and entropies match a full forward
recomputation over the finished sequences. Both KV layouts (contiguous; paged, 8-token pages)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from arpo_jax.models import load_hf
from arpo_jax.sampling import BUDGET, Sampler, SamplingConfig
from tests.models.hf_tiny import FAMILIES, save_tiny

NEW = 20
LAYOUTS = [dict(kv_layout="contiguous"), dict(kv_layout="paged", page_size=8)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = {}

    def get(family):
        if family not in cache:
            path = tmp_path_factory.mktemp(family)
            hf = save_tiny(family, path)
            cache[family] = (hf,) + load_hf(path)
        return cache[family]

    return get


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, models):
    return models(request.param)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: d["kv_layout"])
def test_greedy_matches_transformers_generate(pair, layout):
    hf, model, cfg = pair
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 11, 1, 8)]
    sampler = Sampler(model, SamplingConfig(greedy=True, max_new_tokens=NEW, chunk_size=8, min_window=8, **layout),
                      num_slots=4, capacity=48)
    out = sampler.generate(prompts)
    for p, o in zip(prompts, out):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
        assert o["tokens"].tolist() == ref[0, len(p):].tolist()
        assert o["status"] == BUDGET
    assert sampler.compile_counts()["decode_chunk"] == 2  # attention windows of 32, then 48 (all)


def _full_forward(model, seqs):
    """fp32 logits of each sequence from one forward without cache (right padding is causal-safe)."""
    width = max(len(s) for s in seqs)
    batch = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    return np.asarray(model(jnp.asarray(batch))).astype(np.float64)  # [B, T, V]


def _reference(logits, prompt, generated, cfg: SamplingConfig):
    """Log-probs / entropies recomputed from full-forward logits [T, V] of prompt + generated."""
    logits = logits[len(prompt) - 1: len(prompt) + len(generated) - 1].copy()  # predicted `generated`
    if cfg.vocab_size is not None:
        logits[:, cfg.vocab_size:] = -np.inf
    scaled = logits / cfg.temperature
    logp = scaled - np.logaddexp.reduce(scaled, axis=-1, keepdims=True)
    entropy = -np.sum(np.exp(logp) * np.where(np.isfinite(logp), logp, 0.0), axis=-1)
    trunc = scaled.copy()
    if cfg.top_k:
        kth = np.sort(scaled, axis=-1)[:, -cfg.top_k][:, None]
        trunc = np.where(scaled >= kth, scaled, -np.inf)
    if cfg.top_p < 1.0:
        for i, row in enumerate(trunc):
            order = np.argsort(-row)
            probs = np.exp(row[order] - np.logaddexp.reduce(row))
            keep = (np.cumsum(probs) - probs) < cfg.top_p
            trunc[i, order[~keep]] = -np.inf
    tlogp = trunc - np.logaddexp.reduce(trunc, axis=-1, keepdims=True)
    rows = np.arange(len(generated))
    return tlogp[rows, generated], entropy, np.isfinite(tlogp[rows, generated])


@pytest.mark.parametrize("scfg", [
    SamplingConfig(temperature=1.0, vocab_size=150, max_new_tokens=40, chunk_size=16, min_window=16),
    SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=24, chunk_size=16),
], ids=["t1-vocab-mask", "t0.7-topk-topp"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: d["kv_layout"])
def test_logprobs_and_entropies_match_full_forward(models, scfg, layout):
    hf, model, cfg = models("qwen2")  # one family suffices for the numerics of sampling
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 150, n).tolist() for n in (3, 9, 6)]
    scfg = scfg.replace(**layout)
    sampler = Sampler(model, scfg, num_slots=4, capacity=64, seed=3)
    out = sampler.generate(prompts)
    full = _full_forward(model, [p + o["tokens"].tolist() for p, o in zip(prompts, out)])
    for p, o, logits in zip(prompts, out, full):
        assert len(o["tokens"]) == scfg.max_new_tokens
        lp, ent, allowed = _reference(logits, p, o["tokens"], scfg)
        assert allowed.all()  # every token lies inside the truncated support
        np.testing.assert_allclose(o["logprobs"], lp, atol=1e-4, rtol=0)
        np.testing.assert_allclose(o["entropies"], ent, atol=1e-4, rtol=0)
        if scfg.vocab_size is not None:
            assert o["tokens"].max() < scfg.vocab_size
