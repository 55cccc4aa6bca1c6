"""``rl_batch`` reads the step's one ``TrajectoryBatch``: advantages from its arrays are bit for
bit those of the per-``Trajectory`` path they replaced, for every registered estimator; packed
rows of the benchmark-shaped trees stay within 5 % of the unique tokens."""

import numpy as np
import pytest

from arpo_jax.algorithms import estimators as est
from arpo_jax.rollout.trajectory import tree_arrays
from arpo_jax.training.rl_batch import TrajectoryBatch, advantages, pack_layout, response_arrays
from arpo_jax.training.rl_config import AlgorithmConfig
from tests.training.test_packed_update import trajectories


def _from_lists(trajs, rewards, cfg: AlgorithmConfig):
    """The previous path: arrays re-read from the ``Trajectory`` lists."""
    parent, branch_pos = tree_arrays(list(trajs))
    inputs = est.AdvantageInputs(rewards=rewards, groups=np.asarray([t.prompt_index for t in trajs], np.int32),
                                 parent=parent, branch_pos=branch_pos, mask=response_arrays(trajs)["mask"])
    out = est.compute_advantages(cfg.advantage, inputs, est.EstimatorOptions(cfg.eps, cfg.norm_by_std))
    return np.asarray(out.sequence), np.asarray(out.tokens), np.asarray(out.weights)


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("name", sorted(est.ESTIMATORS))
def test_advantages_from_the_batch_are_bit_identical(name, norm_by_std):
    trajs = trajectories(seed=7, prompts=3, m=6)
    order = np.random.default_rng(0).permutation(len(trajs))  # interleaved prompts, parents by uid
    trajs = [trajs[i] for i in order]
    rewards = np.random.default_rng(2).choice([-1.0, 0.0, 0.5, 1.0], len(trajs)).astype(np.float32)
    cfg = AlgorithmConfig(advantage=name, norm_by_std=norm_by_std)
    got = advantages(TrajectoryBatch.from_trajectories(trajs), rewards, cfg)
    for a, b in zip(got, _from_lists(trajs, rewards, cfg)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("prompts,m,num_micro", [(4, 4, 1), (2, 16, 1), (4, 16, 2)])
def test_packed_rows_within_five_percent_of_the_unique_tokens(prompts, m, num_micro):
    """Bench-shaped trees (long prompts, M trajectories, forks): rows × row length of the chosen
    layout over the unique tokens."""
    from types import SimpleNamespace

    from arpo_jax.apps.update_bench import arpo_trajectories

    args = SimpleNamespace(prompts=prompts, m=m, roots=m // 2, prompt_len=700, response_len=256, vocab=512)
    batch = TrajectoryBatch.from_trajectories(arpo_trajectories(args, np.random.default_rng(0)))
    lay = pack_layout(batch, num_micro)
    assert num_micro * lay.rows * lay.row_len <= 1.05 * batch.forest.tree_sizes().sum()
