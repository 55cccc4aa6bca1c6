"""Which attention core the transformer's layers run, and the cuDNN causal+padding path.

Shapes: B batch, T queries, S keys, N query heads, K kv heads, H head dim.

``ModelConfig.attention_impl`` names the core of the no-cache forward (training, scoring,
prefill without a cache): "reference" (dense scores, the default), "blockwise"
(``attention_blockwise``), "pallas" (``attention_pallas``; TPU interpret mode off TPU) or
"cudnn". cuDNN's fused attention only knows causal masks with per-row lengths, so "cudnn" runs
only where the mask is plain causal+padding (the transformer got ``attention_mask``, not
``key_end``), on a GPU, in bf16/fp16; everywhere else it falls back to "blockwise"
(``select_attention_impl``, unit-tested on CPU). The cache (decode) path keeps its dense
[B, T, S] mask and the reference core.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from arpo_jax.models.attention import interval_mask, reference_attention
from arpo_jax.models.attention_blockwise import blockwise_attention
from arpo_jax.models.attention_pallas import pallas_attention
from arpo_jax.models.config import ATTENTION_IMPLS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IntervalMask:
    """The no-cache mask handed to every layer: key_end [B, S] int32 (key k visible to queries
    k <= q < key_end[b, k]) and the resolved core with its block sizes (static)."""

    key_end: jax.Array
    impl: str = dataclasses.field(default="reference", metadata=dict(static=True))
    block_q: int = dataclasses.field(default=512, metadata=dict(static=True))
    block_k: int = dataclasses.field(default=512, metadata=dict(static=True))


def select_attention_impl(requested: str, *, causal_padding: bool, platform: str, dtype) -> str:
    """The core to run for a requested ``attention_impl``: "cudnn" only for a plain causal+padding
    mask on a GPU in bf16/fp16 (cuDNN flash attention needs them), else "blockwise"; the others
    as requested."""
    if requested not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {requested!r}")
    if requested != "cudnn":
        return requested
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if causal_padding and platform == "gpu" and half else "blockwise"


def causal_padding_attention(q, k, v, valid, implementation: str = "cudnn") -> jax.Array:
    """Causal attention over the real tokens of each row through ``jax.nn.dot_product_attention``.

    q [B, T, N, H]; k, v [B, T, K, H]; valid [B, T] bool (padding anywhere: left, right or
    between). Real tokens move to the front of the row (a stable sort keeps their order, so
    causality among them is unchanged), the kernel sees a right-padded batch with per-row
    lengths, and the output moves back. Padding queries get 0 (unused; never NaN).
    ``implementation="xla"`` runs the same path on any backend (how it is tested on CPU)."""
    order = jnp.argsort(~valid, axis=1, stable=True)  # [B, T]: real tokens first
    inverse = jnp.argsort(order, axis=1)
    gather = lambda x, idx: jnp.take_along_axis(x, idx[:, :, None, None], axis=1)  # noqa: E731
    lengths = jnp.sum(valid, axis=1).astype(jnp.int32)  # [B]
    out = jax.nn.dot_product_attention(gather(q, order), gather(k, order), gather(v, order), is_causal=True,
                                       query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return jnp.where(valid[:, :, None, None], gather(out, inverse), 0).astype(q.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask) -> jax.Array:
    """The attention core. q [B, T, N, H]; k, v [B, S, K, H]; mask either a dense [B, T, S]
    bool (cache path: reference core) or an ``IntervalMask`` (no cache, T == S: its core).
    → [B, T, N, H] in q's dtype."""
    if not isinstance(mask, IntervalMask):
        return reference_attention(q, k, v, mask)
    blocks = dict(block_q=mask.block_q, block_k=mask.block_k)
    if mask.impl == "reference":
        return reference_attention(q, k, v, interval_mask(mask.key_end))
    if mask.impl == "blockwise":
        return blockwise_attention(q, k, v, mask.key_end, **blocks)
    if mask.impl == "pallas":
        return pallas_attention(q, k, v, mask.key_end, interpret=jax.default_backend() != "tpu", **blocks)
    if mask.impl == "cudnn":  # only selected for causal+padding key_end (T for real keys, 0 for padding)
        return causal_padding_attention(q, k, v, mask.key_end > 0, implementation="cudnn")
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {mask.impl!r}")
