"""Flax NNX decoder-only transformer for Qwen2/2.5, Qwen3 and Llama-3, with its KV cache.

Shapes: B batch, T time (new tokens), S cache length, D model, N heads, K kv heads,
H head dim, G = N // K query heads per kv head, F ffn, V vocab.

Positions and the KV cache. Every row of the cache holds its tokens at cache index ==
RoPE position, and ``KVCache.lengths[b]`` counts the valid entries of row b (the next
write index). A call with a cache writes its T new tokens of row b at indices
``lengths[b] + t`` and advances ``lengths[b]`` by ``num_new[b]`` (default T), so rows can
sit at different lengths, receive ragged spans, or receive nothing (``num_new[b] = 0``).
Query t of row b sees cache entries ``s <= lengths[b] + t``; entries past a row's length
are never visible and get overwritten by later writes, so nothing needs clearing.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arpo_jax.models.attention import causal_key_end
from arpo_jax.models.attention_backends import IntervalMask, attend, select_attention_impl
from arpo_jax.models.config import ModelConfig
from arpo_jax.models.paged_cache import PagedLayer
from arpo_jax.models.sharding import ACT_BTD, ACT_LOGITS, constrain

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer key/value buffers with per-row lengths.

    k, v: tuples (one per layer) of [B, S, K, H]; lengths: [B] int32.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    lengths: jax.Array

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]


def init_cache(cfg: ModelConfig, batch_size: int, capacity: int, dtype=None) -> KVCache:
    """An empty cache for ``batch_size`` rows of ``capacity`` tokens each."""
    dtype = dtype or cfg.jnp_dtype
    shape = (batch_size, capacity, cfg.num_kv_heads, cfg.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))  # noqa: E731
    return KVCache(k=zeros(), v=zeros(), lengths=jnp.zeros((batch_size,), jnp.int32))


# ------------------------------------------------------------------------------ RoPE
def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [H/2] (float64 on host), with llama3 scaling when configured."""
    h = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    scaling = cfg.rope_scaling
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding (rotate-half layout, as HF). x: [B, T, N, H]; positions: [B, T]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ---------------------------------------------------------------------------- layers
class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32; the scale multiplies after casting back (as HF)."""

    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


def _normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
    return nnx.Param((std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype))


class Attention(nnx.Module):
    """Grouped-query attention with optional q/k/v bias (Qwen2) and q/k norm (Qwen3)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, n, k, h, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
        self.cfg = cfg
        self.q_proj = _normal(rngs, (d, n, h), pd)
        self.k_proj = _normal(rngs, (d, k, h), pd)
        self.v_proj = _normal(rngs, (d, k, h), pd)
        self.o_proj = _normal(rngs, (n, h, d), pd)
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((n, h), pd))
            self.k_bias = nnx.Param(jnp.zeros((k, h), pd))
            self.v_bias = nnx.Param(jnp.zeros((k, h), pd))
        if cfg.attention_bias_o:
            self.o_bias = nnx.Param(jnp.zeros((d,), pd))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps, param_dtype=pd)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps, param_dtype=pd)

    def __call__(self, x, positions, inv_freq, key_mask, cache_kv=None, write_index=None):
        """x: [B, T, D]; positions: [B, T]; key_mask: [B, T, S] bool (True = visible) or, without
        a cache, an ``IntervalMask`` (key_end [B, T] and the core that runs it).

        cache_kv: optional (k [B, S, K, H], v [B, S, K, H]); new keys/values are written at
        ``write_index`` [B, T] before attending. Returns (out [B, T, D], new cache_kv).
        """
        cfg, dt = self.cfg, x.dtype
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("BTD,DKH->BTKH", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("BTD,DKH->BTKH", x, self.v_proj[...].astype(dt))
        if cfg.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)

        if isinstance(cache_kv, PagedLayer):  # paged cache: write into pages, attend over the row's pages
            out, cache_kv = cache_kv.update_and_attend(q, k, v)
            out = jnp.einsum("BTNH,NHD->BTD", out, self.o_proj[...].astype(dt))
            return (out + self.o_bias[...].astype(dt) if cfg.attention_bias_o else out), cache_kv
        if cache_kv is not None:
            k_cache, v_cache = cache_kv
            rows = jnp.arange(x.shape[0])[:, None]  # [B, 1]
            k_cache = k_cache.at[rows, write_index].set(k.astype(k_cache.dtype), mode="drop")
            v_cache = v_cache.at[rows, write_index].set(v.astype(v_cache.dtype), mode="drop")
            k, v = k_cache.astype(dt), v_cache.astype(dt)
            cache_kv = (k_cache, v_cache)

        out = attend(q, k, v, key_mask)  # [B, T, N, H]
        out = jnp.einsum("BTNH,NHD->BTD", out, self.o_proj[...].astype(dt))
        if cfg.attention_bias_o:
            out = out + self.o_bias[...].astype(dt)
        return out, cache_kv


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
        self.gate_proj = _normal(rngs, (d, f), pd)
        self.up_proj = _normal(rngs, (d, f), pd)
        self.down_proj = _normal(rngs, (f, d), pd)

    def __call__(self, x):
        dt = x.dtype
        gate = jnp.einsum("BTD,DF->BTF", x, self.gate_proj[...].astype(dt))
        up = jnp.einsum("BTD,DF->BTF", x, self.up_proj[...].astype(dt))
        return jnp.einsum("BTF,FD->BTD", jax.nn.silu(gate) * up, self.down_proj[...].astype(dt))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, inv_freq, key_mask, cache_kv=None, write_index=None):
        with jax.named_scope("attention"):  # names in profiles only; the computation is unchanged
            attn_out, cache_kv = self.attn(self.input_norm(x), positions, inv_freq, key_mask, cache_kv, write_index)
            x = constrain(x + attn_out, ACT_BTD)
        with jax.named_scope("mlp"):
            x = constrain(x + self.mlp(self.post_attn_norm(x)), ACT_BTD)
        return x, cache_kv


class Transformer(nnx.Module):
    """Decoder-only causal LM. ``model(tokens)`` → logits [B, T, V] (fp32).

    With ``cache=`` it returns ``(logits, new_cache)`` and writes the new tokens into the
    cache (see the module docstring for the position/length contract).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.embed = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), pd)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
        if not cfg.tie_word_embeddings:
            self.lm_head = _normal(rngs, (cfg.hidden_size, cfg.vocab_size), pd)

    def __call__(self, tokens, *, positions=None, attention_mask=None, key_end=None, cache: KVCache | None = None,
                 num_new=None, return_hidden: bool = False):
        """tokens: int32 [B, T].

        Without a cache: ``attention_mask`` [B, T] (1 = real token, 0 = padding; left or right
        padding) hides padded keys; ``positions`` default to the count of real tokens before
        each token (so left padding works as in HF ``generate``). ``key_end`` [B, T] instead
        gives the interval mask of ``models.attention`` (key k visible to queries
        k <= q < key_end[b, k]: packed rows, rollout trees); ``positions`` are then required.
        With a cache (a ``KVCache`` or a ``PagedKVCache``): positions are
        ``cache.lengths[:, None] + arange(T)``; ``num_new`` [B] (default T) says how many of
        the T tokens are real for each row (a paged cache writes only those).
        """
        cfg = self.cfg
        inv_freq = jnp.asarray(rope_inv_freq(cfg), jnp.float32)  # compile-time constant
        positions, key_mask, write_index, num_new = self._masks(tokens.shape, positions, attention_mask, key_end,
                                                                cache, num_new)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.jnp_dtype)
        x = constrain(x, ACT_BTD)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            cache_kv = None if cache is None else (cache.k[i], cache.v[i]) if isinstance(cache, KVCache) else \
                cache.layer(i, positions, num_new)
            with jax.named_scope(f"layer_{i}"):
                if cfg.remat:
                    x, cache_kv = nnx.remat(lambda lyr, *a: lyr(*a))(layer, x, positions, inv_freq, key_mask,
                                                                   cache_kv, write_index)
                else:
                    x, cache_kv = layer(x, positions, inv_freq, key_mask, cache_kv, write_index)
            if cache is not None:
                new_k.append(cache_kv[0])
                new_v.append(cache_kv[1])
        x = self.final_norm(x)
        if return_hidden:
            out = x
        else:
            with jax.named_scope("lm_head"):
                out = self.logits(x)
        if cache is None:
            return out
        lengths = jnp.minimum(cache.lengths + num_new, cache.capacity)
        return out, dataclasses.replace(cache, k=tuple(new_k), v=tuple(new_v), lengths=lengths)

    def _masks(self, shape, positions, attention_mask, key_end, cache, num_new):
        """(positions [B, T], key mask, cache write index, num_new [B]) of a call (see ``__call__``):
        an ``IntervalMask`` without a cache, a dense [B, T, S] mask for a contiguous cache, None
        for a paged cache (its layers mask and write by position themselves)."""
        b, t = shape
        if cache is None and key_end is not None:
            if positions is None:
                raise ValueError("key_end (an interval mask) needs explicit positions")
            return positions, self._interval_mask(key_end, causal_padding=False), None, num_new
        if cache is None:
            if attention_mask is None:
                attention_mask = jnp.ones((b, t), jnp.int32)
            valid = attention_mask.astype(bool)
            if positions is None:
                positions = jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
            return positions, self._interval_mask(causal_key_end(valid), causal_padding=True), None, num_new
        positions = cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # [B, T]
        num_new = jnp.full((b,), t, jnp.int32) if num_new is None else num_new.astype(jnp.int32)
        if not isinstance(cache, KVCache):
            return positions, None, None, num_new
        key_index = jnp.arange(cache.capacity, dtype=jnp.int32)
        return positions, key_index[None, None, :] <= positions[:, :, None], positions, num_new  # mask [B, T, S]

    def _interval_mask(self, key_end: jax.Array, causal_padding: bool) -> IntervalMask:
        """The no-cache mask for every layer: key_end [B, T] with the core ``cfg.attention_impl``
        resolves to (cuDNN only for a plain causal+padding mask on a GPU)."""
        cfg = self.cfg
        impl = select_attention_impl(cfg.attention_impl, causal_padding=causal_padding,
                                     platform=jax.default_backend(), dtype=cfg.jnp_dtype)
        return IntervalMask(key_end.astype(jnp.int32), impl, cfg.attention_block_q, cfg.attention_block_k)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final hidden states [B, T, D] → fp32 logits [B, T, V]."""
        if self.cfg.tie_word_embeddings:
            w = self.embed[...].astype(hidden.dtype)
            out = jnp.einsum("BTD,VD->BTV", hidden, w, preferred_element_type=jnp.float32)
        else:
            w = self.lm_head[...].astype(hidden.dtype)
            out = jnp.einsum("BTD,DV->BTV", hidden, w, preferred_element_type=jnp.float32)
        return constrain(out, ACT_LOGITS)

    def init_cache(self, batch_size: int, capacity: int, dtype=None) -> KVCache:
        """An empty KV cache laid out for this model."""
        return init_cache(self.cfg, batch_size, capacity, dtype)
