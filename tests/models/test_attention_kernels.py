"""Blockwise and Pallas (interpret mode) attention against ``reference_attention`` under the
interval mask: values and q/k/v gradients (fp32, 1e-5), causal/padded/packed/tree masks, GQA,
T not a multiple of the blocks; no [T, T] buffer; the backend selection."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.models.attention import causal_key_end, interval_mask, reference_attention
from arpo_jax.models.attention_backends import causal_padding_attention, select_attention_impl
from arpo_jax.models.attention_blockwise import blockwise_attention, sees_nothing
from arpo_jax.models.attention_pallas import pallas_attention
from arpo_jax.models.config import ModelConfig

TOL = 1e-5


def random_forest_key_end(rng: np.random.Generator, length: int, new_root_p: float = 0.15) -> np.ndarray:
    """key_end of random trees packed depth-first (one token per node): each new node hangs under
    a random node of the current root-to-last path (or starts a new tree); key_end[k] = 1 + the
    last node of k's subtree. Also returns parent [length] (-1 for roots)."""
    parent = np.full(length, -1)
    path: list[int] = []
    for i in range(length):
        if path and rng.random() >= new_root_p:
            path = path[:rng.integers(1, len(path) + 1)]
            parent[i] = path[-1]
        else:
            path = []
        path.append(i)
    key_end = np.arange(1, length + 1)
    for i in range(length - 1, 0, -1):
        if parent[i] >= 0:
            key_end[parent[i]] = max(key_end[parent[i]], key_end[i])
    return key_end, parent


def key_ends(kind: str, b: int, t: int, seed: int = 0) -> np.ndarray:
    """[B, T] int32 key_end for a mask kind; every kind has some padding except "causal"."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 2, t, b)
    if kind == "causal":
        return np.full((b, t), t, np.int32)
    if kind == "right_pad":
        return np.where(np.arange(t)[None] < lengths[:, None], t, 0).astype(np.int32)
    if kind == "left_pad":
        return np.where(np.arange(t)[None] >= t - lengths[:, None], t, 0).astype(np.int32)
    rows = []
    for n in lengths:  # real tokens first, padding (key_end 0) after
        if kind == "packed":  # several sequences back to back: key_end = end of each
            cuts = np.sort(rng.choice(np.arange(1, n), 3, replace=False))
            ends = np.concatenate([cuts, [n]])
            row = ends[np.searchsorted(ends, np.arange(n), side="right")]
        else:
            row = random_forest_key_end(rng, n)[0]
        rows.append(np.concatenate([row, np.zeros(t - n, int)]))
    return np.stack(rows).astype(np.int32)


def test_random_forest_key_end_is_the_ancestor_mask():
    key_end, parent = random_forest_key_end(np.random.default_rng(3), 40)
    ancestor = np.eye(40, dtype=bool)  # ancestor[q, k]: k is q or an ancestor of q
    for q in range(40):
        k = parent[q]
        while k >= 0:
            ancestor[q, k], k = True, parent[k]
    assert (parent < 0).sum() > 1 and parent.max() >= 0  # several trees, with branches
    np.testing.assert_array_equal(np.asarray(interval_mask(jnp.asarray(key_end)[None]))[0], ancestor)


def _qkv(b, t, n, kh, h, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, w = (jax.random.normal(r, (b, t, n, h), jnp.float32) for r in (keys[0], keys[3]))
    k, v = (jax.random.normal(r, (b, t, kh, h), jnp.float32) for r in keys[1:3])
    return q, k, v, w


@jax.jit(static_argnums=0)
def _value_and_grads(attn, q, k, v, w):
    out, vjp = jax.vjp(attn, q, k, v)
    return (out, *vjp(w))


def _assert_matches_reference(attn, kind, b, t, n, kh, h):
    q, k, v, w = _qkv(b, t, n, kh, h)
    key_end = jnp.asarray(key_ends(kind, b, t))
    got = _value_and_grads(lambda q, k, v: attn(q, k, v, key_end), q, k, v, w)
    want = _value_and_grads(lambda q, k, v: reference_attention(q, k, v, interval_mask(key_end)), q, k, v, w)
    for name, x, y in zip(("out", "dq", "dk", "dv"), got, want):
        assert np.isfinite(np.asarray(x)).all(), name
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=TOL, rtol=TOL, err_msg=name)


KINDS = ["causal", "right_pad", "left_pad", "packed", "tree"]


@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_matches_reference(kind):
    attn = lambda q, k, v, ke: blockwise_attention(q, k, v, ke, block_q=16, block_k=8)  # noqa: E731
    _assert_matches_reference(attn, kind, b=3, t=45, n=4, kh=2, h=8)  # 45: not a multiple of 16 or 8


def test_blockwise_with_blocks_larger_than_t_and_mha():
    _assert_matches_reference(blockwise_attention, "tree", b=2, t=13, n=2, kh=2, h=4)


@pytest.mark.parametrize("kind", ["left_pad", "tree"])
def test_pallas_interpret_matches_reference(kind):
    attn = lambda q, k, v, ke: pallas_attention(q, k, v, ke, block_q=8, block_k=8, interpret=True)  # noqa: E731
    _assert_matches_reference(attn, kind, b=2, t=13, n=2, kh=1, h=8)


def test_query_that_sees_nothing_gets_mean_of_v():
    q, k, v, w = _qkv(2, 12, 2, 1, 4)
    key_end = jnp.asarray([[0] * 12, [12] * 6 + [0] * 6])  # row 0: all padding
    out, dq, dk, dv = _value_and_grads(lambda q, k, v: blockwise_attention(q, k, v, key_end, block_q=8), q, k, v, w)
    np.testing.assert_allclose(np.asarray(out[0]), np.broadcast_to(np.asarray(v[0]).mean(0), (12, 2, 4)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sees_nothing(key_end)), [[True] * 12, [False] * 12])  # right pads see
    assert np.isfinite(np.asarray(dv)).all()
    np.testing.assert_array_equal(np.asarray(dq[0]), 0)  # row 0 attends to nothing: no score gradient
    np.testing.assert_array_equal(np.asarray(dk[0]), 0)


def test_no_recompile_for_new_mask_data():
    q, k, v, _ = _qkv(1, 24, 2, 1, 4)
    f = jax.jit(lambda q, k, v, ke: blockwise_attention(q, k, v, ke, block_q=8, block_k=8))
    for seed in range(3):
        f(q, k, v, jnp.asarray(key_ends("tree", 1, 24, seed))).block_until_ready()
    assert f._cache_size() == 1


def _largest_square_buffers(hlo: str, t: int) -> list[str]:
    """Array shapes in compiled HLO text with at least two dims >= t."""
    shapes = re.findall(r"[fs]\d+\[([\d,]+)\]", hlo)
    return [s for s in shapes if sum(int(d) >= t for d in s.split(",") if d) >= 2]


def test_no_t_by_t_buffer_in_forward_or_backward():
    t = 2048
    q, k, v, _ = _qkv(1, t, 1, 1, 8)
    key_end = jnp.asarray(key_ends("tree", 1, t))

    def compiled(attn):
        loss = lambda q, k, v: jnp.sum(attn(q, k, v, key_end) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()

    ref = compiled(lambda q, k, v, ke: reference_attention(q, k, v, interval_mask(ke)))
    assert _largest_square_buffers(ref.as_text(), t)  # the check sees the reference's [T, T] scores
    blk = compiled(lambda q, k, v, ke: blockwise_attention(q, k, v, ke, block_q=128, block_k=128))
    assert _largest_square_buffers(blk.as_text(), t) == []
    assert blk.memory_analysis().temp_size_in_bytes < t * t * 4 / 16


def test_select_attention_impl():
    sel = lambda impl, cp, platform, dtype="bfloat16": select_attention_impl(  # noqa: E731
        impl, causal_padding=cp, platform=platform, dtype=dtype)
    assert sel("cudnn", True, "gpu") == "cudnn"
    assert sel("cudnn", False, "gpu") == "blockwise"  # a tree / packed mask: cuDNN cannot express it
    assert sel("cudnn", True, "cpu") == "blockwise"
    assert sel("cudnn", True, "gpu", "float32") == "blockwise"  # cuDNN flash attention is half precision only
    assert [sel(i, True, "gpu") for i in ("reference", "blockwise", "pallas")] == ["reference", "blockwise", "pallas"]
    with pytest.raises(ValueError, match="attention_impl"):
        sel("flash", True, "gpu")


def test_config_validates_attention_impl():
    assert ModelConfig(attention_impl="blockwise").attention_impl == "blockwise"
    with pytest.raises(ValueError, match="attention_impl"):
        ModelConfig(attention_impl="flash")


@pytest.mark.parametrize("pad", ["left", "right", "holes"])
def test_causal_padding_path_matches_reference_on_real_tokens(pad):
    """The cuDNN path's packing of real tokens, run through the XLA implementation on CPU."""
    b, t = 2, 10
    valid = np.ones((b, t), bool)
    hidden = {"left": (0, slice(0, 3)), "right": (1, slice(6, None)), "holes": (0, [2, 5])}[pad]
    valid[hidden] = False
    q, k, v, w = _qkv(b, t, 4, 2, 8)
    w = w * valid[:, :, None, None]  # the loss reads real tokens only
    mask = interval_mask(causal_key_end(jnp.asarray(valid)))
    got = _value_and_grads(lambda q, k, v: causal_padding_attention(q, k, v, jnp.asarray(valid), "xla"), q, k, v, w)
    want = _value_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
    np.testing.assert_allclose(np.asarray(got[0])[valid], np.asarray(want[0])[valid], atol=TOL)
    for x, y in zip(got[1:], want[1:]):
        assert np.isfinite(np.asarray(x)).all()
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=TOL)
