"""Jitted sampling engine for ARPO rollouts (DESIGN.md §1, §3).

A ``Sampler`` holds a fixed-capacity batch of *slots* (one sequence each) and a device
``SamplerState`` (KV cache rows, pending token, status, budget, stop-matcher state, PRNG key
per slot). The rollout drives it from the host, between chunks of on-device decoding::

    sampler = Sampler(model, SamplingConfig(stop_strings=("</python>", "</search>"),
                                            eos_ids=(eos,), vocab_size=len(tok)),
                      num_slots=64, capacity=8192, tokenizer=tok, mesh=mesh)
    sampler.insert(slots, prompt_ids)          # prefill prompts (budget, PRNG key per slot)
    r = sampler.decode_chunk()                 # ≤ chunk_size tokens per RUNNING slot
    toks, logps, ents = r.new_tokens(slot)     # + r.status / r.stop_index / r.lengths
    sampler.append(slots, observation_ids)     # tool results: only their tokens are computed
    sampler.fork(parent, child_slots)          # ARPO branch: copy of the parent's state
    sampler.release(slots)                     # free slots for refills

Module map: ``config`` (SamplingConfig, status codes, buckets), ``processing`` (logits →
token, log-prob, entropy), ``stops`` (on-device stop strings), ``state`` (SamplerState),
``pages`` (paged KV-cache allocator, ``OutOfKVPages``), ``engine`` (pure jitted operations),
``sampler`` (the host class), ``results`` (ChunkResult, generate), ``bench`` (``arpo-jax bench sampler``).
"""

from arpo_jax.sampling.config import (BUDGET, CAPACITY, EOS, FREE, RUNNING, STATUS_NAMES, STOP_STRING,
                                      SamplingConfig, bucket)
from arpo_jax.sampling.pages import OutOfKVPages, PageAllocator
from arpo_jax.sampling.processing import mask_vocab, sample_tokens, top_k_top_p_filter
from arpo_jax.sampling.sampler import ChunkResult, Sampler
from arpo_jax.sampling.state import SamplerState, init_state
from arpo_jax.sampling.stops import StopTables, build_stop_tables, token_bytes

__all__ = [
    "BUDGET", "CAPACITY", "EOS", "FREE", "RUNNING", "STATUS_NAMES", "STOP_STRING", "SamplingConfig", "bucket",
    "mask_vocab", "sample_tokens", "top_k_top_p_filter", "ChunkResult", "Sampler", "SamplerState", "init_state",
    "StopTables", "build_stop_tables", "token_bytes", "OutOfKVPages", "PageAllocator",
]
