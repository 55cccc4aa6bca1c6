"""The update on tree-packed rows is today's update: the same loss, gradients and scores as one
padded row per trajectory (fp32, 1e-5), on ARPO-shaped trees, for GRPO / ARPO soft / ARPO hard,
with sampler or recomputed old log-probs and the KL term on; and it does not recompile for new
trees of similar size."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from arpo_jax.algorithms.accumulation import accumulate_gradients, split_micro_batches
from arpo_jax.algorithms.losses import PolicyLossConfig
from arpo_jax.models import create_model, get_preset
from arpo_jax.rollout.trajectory import Trajectory
from arpo_jax.training.rl_batch import (TrajectoryBatch, advantages, pack_layout, packed_arrays, policy_arrays)
from arpo_jax.training.rl_config import AlgorithmConfig
from arpo_jax.training.update import (OptimizerConfig, PolicyUpdater, cached_optimizer, make_packed_policy_batch,
                                      make_policy_batch, policy_loss_fn, score_packed, score_tokens, split_packed,
                                      update)
from tests.algorithms.arpo_trees import arpo_forest

VOCAB = 97
CFG = get_preset("qwen2.5-0.5b", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=8)
LOSS = PolicyLossConfig(kl_coef=0.05, entropy_coef=0.01)
MICRO = 2


def trajectories(seed: int, prompts: int = 4, m: int = 16) -> list[Trajectory]:
    """ARPO-shaped trees (``arpo_forest``) as the rollout's ``Trajectory`` objects, with sampler
    log-probs and entropies that agree on shared tokens."""
    rng = np.random.default_rng(seed)
    f, mask = arpo_forest(rng, prompts=prompts, m=m, roots=2, prompt_len=(20, 40), response_len=(3, 24),
                          vocab=VOCAB - 3)
    lp, ent = -rng.uniform(0.5, 4.0, f.tokens.shape), rng.uniform(0, 3, f.tokens.shape)
    out = []
    for b in range(len(f.length)):
        n, par = int(f.length[b]), int(f.parent[b])
        start = int(f.branch_pos[b]) if par >= 0 else 0
        t = Trajectory(prompt_index=int(f.group[b]), uid=b, prompt_tokens=f.prompt[b, :f.prompt_len[b]].tolist(),
                       parent=par, branch_pos=start)
        src = b
        lp[b, :start], ent[b, :start] = lp[par, :start], ent[par, :start]  # shared tokens: one sampled value
        t.tokens, t.mask = f.tokens[src, :n].tolist(), mask[b, :n].tolist()
        t.logprobs, t.entropies = (lp[b, :n] * mask[b, :n]).tolist(), ent[b, :n].tolist()
        out.append(t)
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "packed"))
def loss_and_grads(params, batch, *, graphdef, packed):
    fn = policy_loss_fn(graphdef, LOSS, 1.0, VOCAB - 3)
    split = split_packed if packed else split_micro_batches
    grads, out = accumulate_gradients(fn, params, split(batch, MICRO))
    return out.loss_sum / out.denominator, out.stats, grads


def _both(trajs, advantage: str, reuse=()):
    """(padded arrays, packed arrays, the packed trajectory slot of each trajectory)."""
    rewards = np.random.default_rng(1).integers(0, 2, len(trajs)).astype(np.float32)
    batch = TrajectoryBatch.from_trajectories(trajs)
    _, tok_adv, weights = advantages(batch, rewards, AlgorithmConfig(advantage=advantage))
    layout = pack_layout(batch, MICRO, reuse=reuse)
    slot = np.zeros(len(trajs), np.int64)
    for k, idx in enumerate(layout.micro):
        slot[idx] = np.arange(len(idx)) * MICRO + k
    rows = -(-len(trajs) // MICRO) * MICRO
    return (policy_arrays(batch, tok_adv, weights, 0, rows=rows, length=layout.seq_len),
            packed_arrays(batch, tok_adv, weights, layout), slot)


@pytest.fixture(scope="module")
def models():
    policy, ref = create_model(CFG, seed=0), create_model(CFG, seed=1)
    graphdef, params = nnx.split(policy)
    return graphdef, params, nnx.split(ref)[1]


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("advantage", ["grpo", "arpo_soft", "arpo_hard"])
def test_packed_loss_and_gradients_equal_padded(models, advantage, recompute):
    graphdef, params, ref_params = models
    trajs = trajectories(seed=0)
    padded, packed, slot = _both(trajs, advantage)
    score = functools.partial(score_tokens, graphdef=graphdef, vocab_size=VOCAB - 3, num_micro=MICRO)
    score_p = functools.partial(score_packed, graphdef=graphdef, vocab_size=VOCAB - 3, num_micro=MICRO)
    pb = make_policy_batch(**padded)
    kb = make_packed_policy_batch(**packed)
    real = padded["attention_mask"][: len(trajs)].astype(bool)
    ref_pad, ref_pack = score(ref_params, pb.tokens, pb.attention_mask)[0], score_p(ref_params, kb)[0]
    np.testing.assert_allclose(np.asarray(ref_pack)[slot][real], np.asarray(ref_pad)[: len(trajs)][real], atol=1e-5)
    padded["ref_logprobs"], packed["ref_logprobs"] = ref_pad, ref_pack
    if recompute:
        padded["old_logprobs"] = score(params, pb.tokens, pb.attention_mask)[0] * padded["loss_mask"]
        packed["old_logprobs"] = score_p(params, kb)[0] * packed["loss_mask"]
    loss_a, stats_a, g_a = loss_and_grads(params, make_policy_batch(**padded), graphdef=graphdef, packed=False)
    loss_b, stats_b, g_b = loss_and_grads(params, make_packed_policy_batch(**packed), graphdef=graphdef, packed=True)
    assert abs(float(loss_a) - float(loss_b)) < 1e-5, (float(loss_a), float(loss_b))
    for k in ("num_tokens", "kl_loss_sum", "entropy_loss_sum", "clipped_tokens"):
        np.testing.assert_allclose(float(stats_a[k]), float(stats_b[k]), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    if recompute:  # the ratio is 1 everywhere: the recompute agrees with the update's forward pass
        assert float(stats_a["clipped_tokens"]) == float(stats_b["clipped_tokens"]) == 0
    assert float(stats_b["num_tokens"]) > 0


def test_packing_computes_each_unique_token_once():
    trajs = trajectories(seed=0)
    batch = TrajectoryBatch.from_trajectories(trajs)
    packed = packed_arrays(batch, np.zeros(batch.mask.shape), np.ones(batch.mask.shape), pack_layout(batch, MICRO))
    real = int((packed["key_end"] > 0).sum())
    assert real == int(batch.forest.tree_sizes().sum()) < 0.5 * int(batch.seq_lengths.sum())


def _shape(trajs, reuse=()):
    layout = pack_layout(TrajectoryBatch.from_trajectories(trajs), MICRO, reuse=reuse)
    return layout.row_len, layout.rows, layout.seq_len, layout.traj_rows


def test_new_trees_reuse_a_compiled_shape_within_five_percent():
    """Over 24 steps of new trees, with the packed shapes compiled so far offered for reuse (as
    ``RLRunner`` does): every step stays within 5 % of its unique tokens or at the fresh
    (fewest-slots) layout, a compiled shape is reused where it is within 5 %, and no more new
    shapes are compiled than without reuse."""
    seen, fresh_seen, reused, new_fresh = set(), set(), 0, 0
    for seed in range(20, 44):
        batch = TrajectoryBatch.from_trajectories(trajectories(seed, prompts=4, m=4))
        fresh = pack_layout(batch, MICRO)
        lay = pack_layout(batch, MICRO, reuse=seen)
        unique = batch.forest.tree_sizes().sum()
        assert MICRO * lay.rows * lay.row_len <= max(1.05 * unique, MICRO * fresh.rows * fresh.row_len)
        reused += (lay.row_len, lay.rows) in seen and (lay.row_len, lay.rows) != (fresh.row_len, fresh.rows)
        new_fresh += (fresh.row_len, fresh.rows) not in fresh_seen
        seen.add((lay.row_len, lay.rows))
        fresh_seen.add((fresh.row_len, fresh.rows))
    assert reused >= 1 and len(seen) <= new_fresh


def test_a_second_step_with_new_trees_does_not_recompile(models):
    graphdef, params, _ = models
    updater = PolicyUpdater(graphdef, cached_optimizer(OptimizerConfig(lr=1e-3)), LOSS, num_micro=MICRO,
                            vocab_size=VOCAB - 3)
    opt_state = updater.init(params)
    params = jax.tree.map(lambda x: x.copy(), params)
    first = trajectories(seed=3)
    known = {_shape(first)[:2]}
    second = next(t for t in map(trajectories, range(4, 40)) if _shape(t, known) == _shape(first))
    shapes, tokens = [], []
    for i, trajs in enumerate((first, second)):
        _, packed, _ = _both(trajs, "arpo_soft", reuse=known)
        shapes.append({k: v.shape for k, v in packed.items()})
        tokens.append(packed["tokens"])
        params, opt_state, m = updater.apply(params, opt_state, make_packed_policy_batch(**packed))
        assert np.isfinite(float(m["loss"]))
        if i == 0:
            compiled = update._cache_size()
    assert shapes[0] == shapes[1] and not np.array_equal(*tokens)  # different trees, same bucketed shapes
    assert update._cache_size() == compiled


def test_padded_arrays_match_a_per_trajectory_reference():
    """``policy_arrays`` (vectorised, from the ``TrajectoryBatch``) = prompt + response per row."""
    trajs = trajectories(seed=5, prompts=2, m=5)
    batch = TrajectoryBatch.from_trajectories(trajs)
    adv = np.random.default_rng(0).normal(size=batch.mask.shape)
    weights = np.random.default_rng(1).uniform(size=batch.mask.shape)
    got = policy_arrays(batch, adv, weights, pad_id=7, rows=len(trajs) + 1)
    for i, t in enumerate(trajs):
        p, n = len(t.prompt_tokens), len(t.tokens)
        np.testing.assert_array_equal(got["tokens"][i, :p + n], t.prompt_tokens + t.tokens)
        assert (got["tokens"][i, p + n:] == 7).all() and got["attention_mask"][i].sum() == p + n
        np.testing.assert_array_equal(got["loss_mask"][i, p:p + n], t.mask)
        np.testing.assert_allclose(got["old_logprobs"][i, p:p + n], np.asarray(t.logprobs) * t.mask, atol=1e-6)
        np.testing.assert_allclose(got["advantages"][i, p:p + n], adv[i, :n], atol=1e-6)
        np.testing.assert_allclose(got["token_weights"][i, p:p + n], weights[i, :n], atol=1e-6)
        assert got["loss_mask"][i, :p].sum() == got["advantages"][i, p + n:].sum() == 0
    assert got["attention_mask"][-1].sum() == 0 and got["tokens"].shape[0] == len(trajs) + 1

