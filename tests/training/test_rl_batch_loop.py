"""The RL step on its one ``TrajectoryBatch``: ``arpo-jax train`` with ``train.packing`` on and off
from the same checkpoint and seed gives the same first step (same rollout, rewards, and the
update's loss within float rounding), with two PPO epochs over the mini-batches built once."""

import numpy as np
import pytest

from arpo_jax.config import load_config
from arpo_jax.training.rl import run_train
from arpo_jax.training.rl_config import RLConfig
from tests.training.test_rl import _metrics, _yaml, setup  # noqa: F401 - the module fixture


@pytest.mark.parametrize("advantage", ["arpo_hard"])
def test_packed_and_padded_steps_agree(setup, advantage):  # noqa: F811
    root, ckpt, questions = setup
    rows = {}
    for packing in (False, True):
        out = root / f"packing_{packing}"
        path = _yaml(root, ckpt, questions, algorithm={"advantage": advantage},
                     train={"steps": 1, "save_every": 0, "out_dir": str(out), "packing": packing, "ppo_epochs": 2,
                            "mini_batches": 2})
        summary = run_train(load_config(RLConfig, path))
        assert summary["status"] == "finished" and summary["step"] == 1
        rows[packing] = _metrics(out)[0]
    padded, packed = rows[False], rows[True]
    for k in ("reward/mean", "rollout/trajectories", "rollout/branches_per_prompt"):
        assert padded[k] == packed[k], k
    for k in ("update/loss", "update/approx_kl_first"):
        np.testing.assert_allclose(packed[k], padded[k], atol=1e-5, err_msg=k)
    assert packed["skipped"] == padded["skipped"] == 0
