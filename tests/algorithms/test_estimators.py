"""The advantage-estimator registry: lookup, config validation, and that the existing estimators
give exactly the numbers of the functions they dispatch to (and that ``rl_batch.advantages``
is that lookup on real ``Trajectory`` objects)."""

import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.algorithms import advantages as adv
from arpo_jax.algorithms import estimators as est
from arpo_jax.config import ConfigError, from_dict
from arpo_jax.rollout.trajectory import Trajectory, tree_arrays
from arpo_jax.training.rl_batch import TrajectoryBatch
from arpo_jax.training.rl_batch import advantages as rl_advantages
from arpo_jax.training.rl_config import AlgorithmConfig
from tests.algorithms.forests import random_forest


def test_registry_names_and_errors():
    assert {"grpo", "arpo_soft", "arpo_hard", "reinforce_pp", "tree", "tree_inner", "tree_2norm"} <= set(est.ESTIMATORS)
    with pytest.raises(ValueError, match=r"algorithm.advantage must be one of \(.*'grpo'.*\), got 'gae'"):
        AlgorithmConfig(advantage="gae")
    with pytest.raises(ConfigError, match="algorithm.advantage must be one of"):
        from_dict(AlgorithmConfig, {"advantage": "gae"}, "algorithm.")
    with pytest.raises(ValueError, match="already registered"):
        est.register_estimator("grpo")(est.grpo)


def test_a_new_estimator_is_one_registration(monkeypatch):
    monkeypatch.setattr(est, "ESTIMATORS", dict(est.ESTIMATORS))

    @est.register_estimator("sign")
    def sign(inputs, opt):
        return est.broadcast(np.sign(inputs.rewards), inputs.mask)

    assert AlgorithmConfig(advantage="sign").advantage == "sign"
    out = est.compute_advantages("sign", random_forest(np.random.default_rng(0)))
    assert set(np.unique(out.sequence)) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_existing_estimators_keep_their_numbers(seed, norm_by_std):
    x = random_forest(np.random.default_rng(seed))
    opt = est.EstimatorOptions(eps=1e-6, norm_by_std=norm_by_std)
    seq = np.asarray(adv.grpo_advantages(x.rewards, x.groups, eps=1e-6, normalize_std=norm_by_std))
    maskf = x.mask.astype(np.float32)
    for name in ("grpo", "arpo_soft"):
        out = est.compute_advantages(name, x, opt)
        np.testing.assert_array_equal(out.sequence, seq)
        np.testing.assert_array_equal(out.tokens, seq[:, None] * maskf)
        np.testing.assert_array_equal(out.weights, maskf)
    hard_tok, hard_w = adv.hard_token_advantages(*map(jnp.asarray, (seq, x.parent, x.branch_pos, x.mask)))
    out = est.compute_advantages("arpo_hard", x, opt)
    np.testing.assert_array_equal(out.tokens, hard_tok)
    np.testing.assert_array_equal(out.weights, hard_w)
    out = est.compute_advantages("reinforce_pp", x, opt)
    np.testing.assert_array_equal(out.tokens, adv.reinforce_pp_token_advantages(x.rewards, x.mask, x.groups))
    np.testing.assert_array_equal(out.sequence, seq)


def _trajectories(x):
    """Trajectory objects with the forest's tree, lengths and mask (tokens arbitrary)."""
    trajs = []
    for b in range(len(x.rewards)):
        t = Trajectory(prompt_index=int(x.groups[b]), uid=b, prompt_tokens=[1], parent=int(x.parent[b]),
                       branch_pos=int(x.branch_pos[b]))
        n = int(np.max(np.nonzero(np.r_[1, x.mask[b]])[0]))  # up to the last model token
        for m in x.mask[b, :n]:
            if m:
                t.add_model_tokens([3], [0.0], [0.0])
            else:
                t.add_inserted_tokens([4])
        trajs.append(t)
    return trajs


@pytest.mark.parametrize("name", ["grpo", "arpo_hard", "reinforce_pp", "tree", "tree_2norm"])
def test_rl_batch_advantages_is_the_registry_lookup(name):
    x = random_forest(np.random.default_rng(5))
    trajs = _trajectories(x)
    parent, branch_pos = tree_arrays(trajs)
    np.testing.assert_array_equal(parent, x.parent)
    seq, tok, w = rl_advantages(TrajectoryBatch.from_trajectories(trajs), x.rewards,
                                AlgorithmConfig(advantage=name, eps=1e-6))
    tr = tok.shape[1]
    ref = est.compute_advantages(name, x._replace(mask=x.mask[:, :tr]), est.EstimatorOptions(1e-6, True))
    np.testing.assert_array_equal(seq, ref.sequence)
    np.testing.assert_array_equal(tok, ref.tokens)
    np.testing.assert_array_equal(w, ref.weights)
