"""Slots: append (continue after an observation), fork, release/refill, budgets, capacity,
no recompilation in steady state, and slots sharded over a mesh — in both KV layouts
(contiguous rows and paged, see ``sampling/pages.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.models import load_hf, make_mesh
from arpo_jax.sampling import BUDGET, CAPACITY, FREE, RUNNING, Sampler, SamplingConfig
from tests.models.hf_tiny import save_tiny

CFG = SamplingConfig(temperature=1.0, max_new_tokens=64, chunk_size=8, prefill_chunk=16)
SLOTS, CAP = 8, 96


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_slots")
    save_tiny("qwen3", path)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return load_hf(ckpt)[0]


@pytest.fixture(scope="module", params=["contiguous", "paged"])
def cfg(request):
    return CFG.replace(kv_layout=request.param)


@pytest.fixture(scope="module")
def sampler(model, cfg):
    return Sampler(model, cfg, num_slots=SLOTS, capacity=CAP, seed=0)


@pytest.fixture
def fresh(sampler):
    used = [s for s in range(SLOTS) if sampler.status[s] != FREE]
    if used:
        sampler.release(used)
    return sampler


def _prompt(rng, n):
    return rng.integers(0, 160, n).tolist()


def test_append_matches_fresh_prefill(fresh, model):
    s, rng = fresh, np.random.default_rng(0)
    prompt = _prompt(rng, 7)
    s.insert([2], [prompt], budgets=[6])
    r = s.decode_chunk()
    gen = r.new_tokens(2)[0].tolist()
    assert len(gen) == 6 and r.status[2] == BUDGET
    seq = prompt + gen
    for obs_len in (5, 40, 1):  # several appends (40: prefilled in 16-token pieces), vs a fresh prefill
        obs = _prompt(rng, obs_len)
        before = s.stats["prefill_tokens"]
        s.append([2], [obs], resume=False)
        assert s.stats["prefill_tokens"] - before == obs_len  # only the new tokens are computed
        seq += obs
        ref = np.asarray(model(jnp.asarray([seq], jnp.int32)))[0, -1]
        np.testing.assert_allclose(s.next_logits([2])[0], ref, atol=1e-4, rtol=0)
    assert s.lengths[2] == len(seq) - 1 and s.status[2] == BUDGET


def test_fork_matches_fresh_run_from_same_prefix(fresh):
    s, rng = fresh, np.random.default_rng(1)
    prompt, obs = _prompt(rng, 9), _prompt(rng, 5)
    s.insert([0], [prompt], budgets=[8 + 5 + 16])
    gen = s.decode_chunk().new_tokens(0)[0].tolist()  # 8 tokens, still running
    assert len(gen) == 8 and s.status[0] == RUNNING
    s.append([0], [obs])  # the tool result; the budget is charged 5
    key = jax.random.key(123)
    before = dict(s.stats)
    s.fork(0, [1], keys=[key])  # explicit key
    s.fork(0, [4, 5])  # keys split from the parent's stream
    assert s.stats["prefill_tokens_padded"] == before["prefill_tokens_padded"]  # a fork computes nothing
    np.testing.assert_array_equal(s.next_logits([0, 1, 4])[1:], np.repeat(s.next_logits([0]), 2, 0))
    s.insert([3], [prompt + gen + obs], budgets=[16], keys=[key])  # fresh run from the same prefix
    outs = {k: [] for k in (0, 1, 3, 4, 5)}
    while any(s.status[k] == RUNNING for k in outs):
        r = s.decode_chunk()
        for k in outs:
            outs[k] += r.new_tokens(k)[0].tolist()
    assert outs[1] == outs[3] and len(outs[1]) == 16  # same state, same key → same tokens
    assert outs[0] != outs[1] and outs[4] != outs[5] and outs[4] != outs[0]  # split streams differ
    assert all(s.status[k] == BUDGET for k in outs)


def test_refill_and_batch_independence(fresh):
    """12 prompts through 8 slots (freed slots are refilled); each row's tokens depend only on
    its key, so running a prompt alone gives the same tokens."""
    rng = np.random.default_rng(2)
    prompts = [_prompt(rng, int(n)) for n in rng.integers(2, 20, 12)]
    budgets = rng.integers(3, 20, 12).tolist()
    keys = list(range(100, 112))
    together = fresh.generate(prompts, keys=keys, budgets=budgets)
    alone = fresh.generate(prompts[5:6], keys=keys[5:6], budgets=budgets[5:6])[0]
    assert [len(o["tokens"]) for o in together] == budgets
    np.testing.assert_array_equal(alone["tokens"], together[5]["tokens"])
    np.testing.assert_allclose(alone["logprobs"], together[5]["logprobs"], atol=1e-5)
    assert fresh.free_slots() == list(range(SLOTS))


def test_capacity_and_validation(fresh):
    s = fresh
    s.insert([0], [[1] * (CAP - 3)], budgets=[100])  # pending at CAP-4: 4 steps fill the row
    while s.status[0] == RUNNING:
        r = s.decode_chunk()
    assert s.status[0] == CAPACITY and s.lengths[0] == CAP and r.num_new[0] == 4
    s.insert([1], [[1, 2, 3]])
    with pytest.raises(ValueError, match="overflow"):
        s.append([1], [[5] * (CAP - 2)])
    with pytest.raises(ValueError, match="free slot"):
        s.append([6], [[5]])
    with pytest.raises(ValueError, match="distinct"):
        s.insert([2, 2], [[1], [2]])
    with pytest.raises(ValueError, match="parent and child"):
        s.fork(1, [1])
    s.insert([2], [[4, 5]], budgets=[0])
    assert s.status[2] == BUDGET
    s.release([0, 1])
    before = s.compile_counts()
    r = s.decode_chunk()  # nothing RUNNING: answered on the host
    assert r.steps == 0 and not r.num_new.any() and r.status[2] == BUDGET and s.compile_counts() == before


def test_steady_state_never_recompiles(model, cfg):
    s = Sampler(model, cfg, num_slots=SLOTS, capacity=CAP, seed=5)
    rng = np.random.default_rng(3)

    def cycle(k):
        """insert 2, decode, append to 2 (lengths 1..16: one bucket), fork 1→2, release 4."""
        s.insert([0, 1], [_prompt(rng, 2 + k % 15), _prompt(rng, 17 - k % 15)], budgets=[40, 40])
        s.decode_chunk()
        s.append([0, 1], [_prompt(rng, 1 + k % 16), _prompt(rng, 16 - k % 16)])
        s.decode_chunk()
        s.fork(0, [2, 3])
        s.decode_chunk()
        s.release([0, 1, 2, 3])

    cycle(0)
    warm = s.compile_counts()
    for k in range(1, 12):
        cycle(k)
    assert s.compile_counts() == warm
    assert warm["decode_chunk"] == 1 and warm["append"] == 1 and warm["insert"] == 1
    s.insert([0], [_prompt(rng, 30)])  # one slot and a longer prompt: new buckets, one compile
    s.insert([1], [_prompt(rng, 25)])
    assert s.compile_counts()["insert"] == warm["insert"] + 1
    s.insert([2], [_prompt(rng, 70)], budgets=[20])  # lengths beyond the first attention window
    s.decode_chunk()
    s.decode_chunk()
    assert s.compile_counts()["decode_chunk"] == 2  # one variant per window bucket (64, then 96)


def _script(s: Sampler, rng):
    s.insert([0, 3, 5, 6], [_prompt(rng, n) for n in (4, 12, 7, 2)], budgets=[30, 5, 30, 30],
             keys=[11, 12, 13, 14])
    outs = [s.decode_chunk()]
    s.append([0, 5], [_prompt(rng, 6), _prompt(rng, 3)])
    s.fork(6, [7, 1], keys=[21, 22])
    outs += [s.decode_chunk() for _ in range(3)]
    return np.concatenate([o.tokens for o in outs], 1), np.concatenate([o.logprobs for o in outs], 1)


def test_sharded_slots_match_single_device(ckpt, model, cfg):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    single = _script(Sampler(model, cfg, num_slots=SLOTS, capacity=CAP), np.random.default_rng(4))
    mesh = make_mesh((4, 1, 2))  # slots split 4 ways over data, heads over tensor
    sharded_model = load_hf(ckpt, mesh=mesh)[0]
    s = Sampler(sharded_model, cfg, num_slots=SLOTS, capacity=CAP, mesh=mesh)
    pool_spec = ("tensor",) if cfg.kv_layout == "paged" else ("data", None, "tensor")  # pools: heads split only
    assert tuple(s.state.cache.k[0].sharding.spec) == pool_spec
    sharded = _script(s, np.random.default_rng(4))
    np.testing.assert_array_equal(sharded[0], single[0])
    np.testing.assert_allclose(sharded[1], single[1], atol=1e-4)
    assert s.state.cache.k[0].sharding == s.shardings.cache.k[0]  # outputs keep the slot sharding
    assert s.state.status.sharding == s.shardings.status
    s.release(list(range(SLOTS)))
    _script(s, np.random.default_rng(5))
    assert set(s.compile_counts().values()) <= {0, 1}  # no recompilation with sharded slots


def test_fork_then_rewind_restarts_from_post_observation_state(fresh):
    """ARPO paper rule: look k tokens past an observation, then branch from the point right
    after it. fork + rewind must equal a fork taken at that point (same key → same tokens)."""
    s, rng = fresh, np.random.default_rng(3)
    prompt, obs = _prompt(rng, 6), _prompt(rng, 4)
    s.insert([0], [prompt], budgets=[40])
    s.decode_chunk()
    s.append([0], [obs])
    mark = (int(s.lengths[0]), obs[-1], int(s.budget[0]))
    key = jax.random.key(7)
    s.fork(0, [1], keys=[key])  # reference: the branch taken right after the observation
    logits_at_mark = s.next_logits([0])
    r = s.decode_chunk()  # the parent looks ahead (8 tokens); slot 1 decodes too
    outs = {1: r.new_tokens(1)[0].tolist(), 2: []}
    s.fork(0, [2], keys=[key])
    s.rewind([2], [mark[0]], [mark[1]], [mark[2]])
    assert s.lengths[2] == mark[0] and s.status[2] == RUNNING and s.budget[2] == mark[2]
    np.testing.assert_allclose(s.next_logits([2]), logits_at_mark, atol=1e-5, rtol=0)
    s.release([0])
    while any(s.status[k] == RUNNING for k in outs):
        r = s.decode_chunk()
        for k in outs:
            outs[k] += r.new_tokens(k)[0].tolist()
    assert outs[2] == outs[1] and len(outs[2]) == 40 - 8 - 4
    with pytest.raises(ValueError, match="rewind lengths"):
        s.rewind([2], [int(s.lengths[2]) + 1], [0], [1])


def test_topk_entropy_matches_reference(model, cfg):
    cfg = cfg.replace(topk_entropy=10, chunk_size=4)
    s = Sampler(model, cfg, num_slots=2, capacity=CAP, seed=0)
    prompt = _prompt(np.random.default_rng(4), 5)
    s.insert([0], [prompt], budgets=[4])
    logits = s.next_logits([0])[0]
    r = s.decode_chunk()
    logp = logits - np.logaddexp.reduce(logits)
    top = np.sort(logp)[::-1][:10]
    np.testing.assert_allclose(r.topk_entropies[0, 0], -np.sum(np.exp(top) * top), rtol=1e-5)
    assert r.topk_entropies[0, 0] < r.entropies[0, 0] + 1e-6


def test_dropped_weights_are_an_error_until_new_ones_are_given(fresh, model):
    """update_params(None) lets a trainer free a sampling copy of the policy between rollouts;
    an operation in that window fails with a clear message, and new weights resume sampling."""
    s, rng = fresh, np.random.default_rng(7)
    weights = s.params
    s.update_params(None)
    try:
        with pytest.raises(RuntimeError, match=r"weights were dropped \(update_params\(None\)\)"):
            s.insert([0], [_prompt(rng, 5)])
    finally:
        s.update_params(weights)
    s.insert([0], [_prompt(rng, 5)], budgets=[3])
    assert len(s.decode_chunk().new_tokens(0)[0]) == 3
