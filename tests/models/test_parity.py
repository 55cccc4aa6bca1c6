"""Logit parity with transformers' PyTorch implementation (fp32, tiny random models)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from arpo_jax.models import load_hf, save_hf
from tests.models.hf_tiny import FAMILIES, save_tiny

TOL = 1e-4


def _hf_logits(model, ids, mask=None, positions=None):
    with torch.no_grad():
        kw = {}
        if mask is not None:
            kw["attention_mask"] = torch.tensor(mask)
        if positions is not None:
            kw["position_ids"] = torch.tensor(positions)
        return model(torch.tensor(ids), **kw).logits.float().numpy()


@pytest.fixture(scope="module", params=[(f, tie) for f in FAMILIES for tie in (False, True)],
                ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}")
def pair(request, tmp_path_factory):
    family, tie = request.param
    path = tmp_path_factory.mktemp(f"{family}_{tie}")
    hf = save_tiny(family, path, tie=tie)
    model, cfg = load_hf(path)
    assert cfg.family == family and cfg.tie_word_embeddings == tie
    return hf, model, cfg, path


def test_full_forward_matches(pair):
    hf, model, cfg, _ = pair
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 11))
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    np.testing.assert_allclose(ours, _hf_logits(hf, ids), atol=TOL, rtol=0)


def test_left_padded_batch_matches(pair):
    hf, model, cfg, _ = pair
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, (3, 9))
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask)))
    ref = _hf_logits(hf, ids, mask, positions)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("impl", ["blockwise"])
def test_left_padded_batch_matches_with_attention_impl(pair, impl):
    """The same left-padded comparison with a non-reference attention core (small blocks)."""
    hf, _, cfg, path = pair
    model, _ = load_hf(path, attention_impl=impl, attention_block_q=8, attention_block_k=4)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, cfg.vocab_size, (3, 13))
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask)))
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], _hf_logits(hf, ids, mask, positions)[valid], atol=TOL, rtol=0)


def test_right_padded_batch_matches_unpadded_rows(pair):
    hf, model, cfg, _ = pair
    rng = np.random.default_rng(2)
    lengths = [9, 5, 7]
    ids = rng.integers(0, cfg.vocab_size, (3, 9))
    mask = (np.arange(9)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask)))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(ours[b, :n], _hf_logits(hf, ids[b:b + 1, :n])[0], atol=TOL, rtol=0)


def test_incremental_decoding_through_cache(pair):
    """Prefill rows of different lengths, then feed tokens one at a time through the cache."""
    hf, model, cfg, _ = pair
    rng = np.random.default_rng(3)
    total = 12
    ids = rng.integers(0, cfg.vocab_size, (2, total))
    prompt_lens = np.array([5, 3])
    cache = model.init_cache(2, 32)
    prefill = np.where(np.arange(5)[None] < prompt_lens[:, None], ids[:, :5], 0)
    logits, cache = model(jnp.asarray(prefill, jnp.int32), cache=cache, num_new=jnp.asarray(prompt_lens))
    steps = {0: [np.asarray(logits)[0, 4]], 1: [np.asarray(logits)[1, 2]]}
    step = jax.jit(lambda m, t, c: m(t, cache=c))
    for i in range(total - 5):
        tok = np.stack([ids[0, 5 + i], ids[1, 3 + i]])[:, None]
        logits, cache = step(model, jnp.asarray(tok, jnp.int32), cache)
        steps[0].append(np.asarray(logits)[0, 0])
        steps[1].append(np.asarray(logits)[1, 0])
    np.testing.assert_array_equal(np.asarray(cache.lengths), prompt_lens + total - 5)
    for b, plen in enumerate(prompt_lens):
        n = plen + total - 5
        ref = _hf_logits(hf, ids[b:b + 1, :n])[0]
        np.testing.assert_allclose(np.stack(steps[b]), ref[plen - 1:n], atol=TOL, rtol=0)


def test_round_trip_hf_arpo_hf(pair, tmp_path):
    import transformers

    hf, model, cfg, _ = pair
    out = save_hf(model, cfg, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 7))
    np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(hf, ids), atol=1e-6, rtol=0)
    model2, cfg2 = load_hf(out)
    assert cfg2 == cfg
    np.testing.assert_allclose(np.asarray(model2(jnp.asarray(ids, jnp.int32))),
                               np.asarray(model(jnp.asarray(ids, jnp.int32))), atol=0, rtol=0)
