"""Sampling configuration, slot status codes and the bucket rule for ragged inputs."""

from __future__ import annotations

import dataclasses

# Slot status codes (``SamplerState.status``). RUNNING slots decode; every other value is a
# stopped slot, and the value says why. The order is the priority when several hold at once.
RUNNING = 0
EOS = 1  # sampled one of ``eos_ids``
STOP_STRING = 2  # a stop string completed inside the last sampled token
BUDGET = 3  # the slot's token budget reached 0 (generated + appended tokens)
CAPACITY = 4  # the KV cache row is full
FREE = 5  # never used, or released
STATUS_NAMES = {RUNNING: "running", EOS: "eos", STOP_STRING: "stop_string", BUDGET: "budget",
                CAPACITY: "capacity", FREE: "free"}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn and when a slot stops. Hashable: it is a static jit argument.

    temperature, top_k (0 = off), top_p (1.0 = off), greedy: the sampling distribution is
        softmax(mask(logits) / temperature), then top-k, then top-p, renormalised (the order
        of HF ``generate`` and vLLM). ``greedy`` takes the argmax instead.
    max_new_tokens: default per-slot budget given at ``insert``; the budget counts generated
        tokens and the tokens of appended observations (ARPO counts tool tokens too).
    stop_strings: strings that stop a slot when they appear in the text it generated since its
        last insert/append (matched over UTF-8 bytes on device, see ``stops.py``).
    eos_ids: token ids that stop a slot.
    vocab_size: the tokenizer's vocabulary size; logits of ids >= vocab_size (padding rows of
        the embedding matrix, e.g. Qwen's) are set to -inf before anything else. None = all.
    chunk_size: tokens per ``decode_chunk`` call (the loop exits early when every slot stopped).
    compute_entropy: compute the per-token entropy in the loop (False only to measure its cost).
    topk_entropy: k > 0 also returns, per token, -Σ exp(l)·l over the k largest log-probs of
        the sampling distribution, not renormalised (the released ARPO code's entropy, k = 10).
    min_prefill_bucket: smallest padded length for insert/append spans (powers of two above).
    prefill_chunk: longer spans are prefilled in pieces of this many tokens (a ``lax.scan``),
        bounding the attention scores to [n, heads, prefill_chunk, window].
    attention_window: run decode/append on the first ``window`` cache positions only (a
        power-of-two bucket >= ``min_window`` covering the longest live slot) rather than on
        the whole capacity; one compiled variant per bucket in use. False: always the capacity.
    kv_layout: "contiguous" (a [capacity] cache row per slot: slots are the memory limit) or
        "paged" (a shared pool of ``num_pages`` pages of ``page_size`` tokens; forks share
        pages, copy-on-write; memory, not slots, is the limit). See ``sampling/pages.py``.
    page_size, num_pages: the paged pool (num_pages 0 = every slot at full capacity).
    paged_attention_impl: decode attention over pages, "reference" (gather + einsum, any
        backend) or "pallas" (the TPU kernel ``pallas.ops.tpu.paged_attention``).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    max_new_tokens: int = 512
    stop_strings: tuple[str, ...] = ()
    eos_ids: tuple[int, ...] = ()
    vocab_size: int | None = None
    chunk_size: int = 32
    compute_entropy: bool = True
    topk_entropy: int = 0
    min_prefill_bucket: int = 16
    prefill_chunk: int = 512
    attention_window: bool = True
    min_window: int = 64
    kv_layout: str = "contiguous"
    page_size: int = 16
    num_pages: int = 0
    paged_attention_impl: str = "reference"

    def __post_init__(self):
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if min(self.chunk_size, self.max_new_tokens, self.min_prefill_bucket, self.prefill_chunk) < 1:
            raise ValueError("chunk_size, max_new_tokens, min_prefill_bucket and prefill_chunk must be >= 1")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop strings must be non-empty")
        if self.kv_layout not in ("contiguous", "paged"):
            raise ValueError(f"kv_layout must be 'contiguous' or 'paged', got {self.kv_layout!r}")
        if self.paged_attention_impl not in ("reference", "pallas"):
            raise ValueError(f"paged_attention_impl must be 'reference' or 'pallas', got {self.paged_attention_impl!r}")
        if self.page_size < 1 or self.num_pages < 0:
            raise ValueError(f"page_size must be >= 1 and num_pages >= 0, got {self.page_size}, {self.num_pages}")

    @property
    def effective_temperature(self) -> float:
        """The temperature of the reported distribution (1.0 when greedy)."""
        return 1.0 if self.greedy else float(self.temperature)

    def replace(self, **kw) -> "SamplingConfig":
        return dataclasses.replace(self, **kw)


def prefill_length(n: int, cfg: SamplingConfig, capacity: int) -> int:
    """Padded length of a span of ``n`` tokens: a bucket, rounded up to whole prefill chunks."""
    t = bucket(n, cfg.min_prefill_bucket, capacity)
    if t > cfg.prefill_chunk:
        t = -(-t // cfg.prefill_chunk) * cfg.prefill_chunk
    return t


def window_size(n: int, cfg: SamplingConfig, capacity: int) -> int:
    """Cache positions a call must see to reach position ``n - 1``: a bucket, or the capacity."""
    if not cfg.attention_window or n >= capacity:
        return capacity
    return bucket(n, cfg.min_window, capacity)


def bucket(n: int, minimum: int, maximum: int) -> int:
    """Smallest power of two >= max(n, minimum), capped at ``maximum`` (bounds recompiles)."""
    if n > maximum:
        raise ValueError(f"{n} exceeds the maximum {maximum}")
    b = max(1, minimum)
    while b < n:
        b *= 2
    return min(b, maximum)
