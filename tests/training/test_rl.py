"""``arpo-jax train`` end to end on the scripted agent with the real sandboxed Python tool:
GRPO and ARPO runs, learning, exact resume after SIGKILL (also from a damaged checkpoint and
across an epoch boundary), NaN skipping, config errors."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from arpo_jax.config import load_config
from arpo_jax.models import load_hf
from arpo_jax.training.rl import run_train
from arpo_jax.training.rl_config import RLConfig
from tests.rollout.scripted import save_scripted, write_questions
from tests.training.test_sft_resume import _metrics, _steps, _wait_for_step

STEPS = 8
TIMING = ("time/", "tokens_per_s")


def _yaml(root, ckpt, questions, **sections):
    cfg = {
        "model": {"path": str(ckpt), "mesh": [1, 1, 1]},
        "data": {"train_files": [str(questions)], "prompts_per_step": 2},
        "rollout": {"policy": "arpo", "total_rollouts": 4, "initial_rollouts": 2, "max_response_tokens": 40,
                    "max_prompt_tokens": 64, "chunk_size": 8, "entropy_tokens": 3},
        "tools": {"protocol": {"tools": ["python"]}, "python": {"timeout_s": 20}},
        "reward": {"name": "math"},
        "optimizer": {"lr": 0.002},
        "train": {"steps": STEPS, "save_every": 2, "out_dir": str(root / "unused"), "async_checkpoint": False},
        "logging": {"progress": False, "tensorboard": False},
    }
    for sec, vals in sections.items():
        cfg.setdefault(sec, {}).update(vals)
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    ckpt = save_scripted(root / "scripted")
    questions = write_questions(root / "questions" / "test.jsonl", 6)
    return root, ckpt, questions


def _exact(row):
    return {k: v for k, v in row.items() if k != "time" and not any(s in k for s in TIMING)}


@pytest.mark.parametrize("policy,advantage", [("trajectory", "grpo"), ("arpo", "arpo_hard")])
def test_twenty_steps_learn_with_finite_metrics(setup, policy, advantage):
    root, ckpt, questions = setup
    out = root / f"run_{policy}"
    path = _yaml(root, ckpt, questions, rollout={"policy": policy}, algorithm={"advantage": advantage},
                 data={"val_files": [str(questions)], "val_prompts": 2},
                 train={"steps": 20, "save_every": 10, "val_every": 10, "out_dir": str(out)})
    summary = run_train(load_config(RLConfig, path))
    assert summary["status"] == "finished" and summary["step"] == 20
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 21))
    for r in rows:
        for k in ("reward/mean", "update/loss", "update/grad_norm", "rollout/tool_calls_per_traj"):
            assert np.isfinite(r[k]), (k, r)
        assert r["rollout/trajectories"] == 2 * 4 and r["skipped"] == 0
    assert "val/accuracy" in rows[9] and "val/accuracy" in rows[19]
    if policy == "arpo":
        assert sum(r["rollout/branches_per_prompt"] for r in rows) > 0
    dumps = sorted((out / "rollouts").glob("step_*.jsonl"))
    assert len(dumps) == 20
    rec = json.loads(dumps[-1].read_text().splitlines()[0])
    assert {"response", "reward", "advantage", "entropies", "mask", "tool_calls", "parent"} <= set(rec)
    # the updates changed the policy, in the rewarded direction
    rewards = [r["reward/mean"] for r in rows]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2, rewards
    before, after = (np.asarray(load_hf(p)[0].lm_head[...]) for p in (ckpt, summary["exported"][-1]))
    assert np.abs(after - before).max() > 1e-3


def _start(path, out, env, *extra):
    cmd = [sys.executable, "-m", "arpo_jax.cli", "train", str(path), f"train.out_dir={out}", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def test_sigkill_resume_is_exact_even_from_a_damaged_checkpoint(setup):
    root, ckpt, questions = setup
    path = _yaml(root, ckpt, questions)
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=str(root / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    ref_dir = root / "ref"
    _finish(_start(path, ref_dir, env))
    ref = [_exact(r) for r in _metrics(ref_dir)]
    assert len(ref) == STEPS

    out = root / "killed"
    proc = _start(path, out, env, "train.debug_step_sleep=0.3")
    _wait_for_step(proc, out, random.Random().randint(4, STEPS - 2))
    while len(_steps(out / "checkpoints")) < 2:
        _wait_for_step(proc, out, _metrics(out)[-1]["step"] + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    shutil.copytree(out, root / "damaged")
    summary, err = _finish(_start(path, out, env))
    assert summary["status"] == "finished" and "resumed from step" in err
    assert [_exact(r) for r in _metrics(out)] == ref

    ck = root / "damaged" / "checkpoints"  # a kill during a checkpoint write: the newest step is unreadable
    steps = _steps(ck)
    shutil.rmtree(ck / str(steps[-1]) / "state")
    summary, err = _finish(_start(path, root / "damaged", env))
    assert f"falling back to step {steps[-2]}" in err
    assert [_exact(r) for r in _metrics(root / "damaged")] == ref


def test_resume_at_an_epoch_boundary_and_nan_skip(setup, tmp_path):
    root, ckpt, _ = setup
    questions = write_questions(tmp_path / "q4" / "test.jsonl", 4)  # 2 steps per epoch
    path = _yaml(tmp_path, ckpt, questions, train={"steps": 5, "out_dir": str(tmp_path / "full"),
                                                   "debug_nan_step": 3})
    run_train(load_config(RLConfig, path))
    full = _metrics(tmp_path / "full")
    assert [r["epoch"] for r in full] == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r["skipped"] for r in full] == [0, 0, 1, 0, 0] and full[-1]["skipped_total"] == 1
    assert full[2]["update/loss"] is None or not np.isfinite(full[2]["update/loss"])  # NaN is logged as null
    assert np.isfinite(full[3]["update/loss"])

    split = tmp_path / "split"
    run_train(load_config(RLConfig, path, [f"train.out_dir={split}", "train.steps=2"]))  # ends on the boundary
    summary = run_train(load_config(RLConfig, path, [f"train.out_dir={split}"]))
    assert summary["step"] == 5
    assert [_exact(r) for r in _metrics(split)] == [_exact(r) for r in full]


def test_config_errors_are_one_line_and_name_the_key(setup, tmp_path):
    root, ckpt, questions = setup
    path = _yaml(tmp_path, ckpt, questions)
    cases = [("rollout.bogus=1", "rollout.bogus"), ("train.steps=many", "train.steps"),
             ("data.train_files=[/nope.jsonl]", "/nope.jsonl")]
    for override, needle in cases:
        r = subprocess.run([sys.executable, "-m", "arpo_jax.cli", "train", str(path), override,
                            f"train.out_dir={tmp_path / 'x'}"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert r.returncode == 2, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()
        assert len(last) == 1 and needle in last[0], r.stderr


def test_validation_rollout_keeps_the_training_budgets():
    """Greedy validation derives its rollout config from the training one (capacity and
    determinism included): one trajectory per prompt, no branching."""
    from arpo_jax.rollout import RolloutConfig
    from arpo_jax.training.rl import validation_rollout

    train = RolloutConfig(policy="arpo", total_rollouts=4, initial_rollouts=2, capacity=300, deterministic=False,
                          max_response_tokens=40, max_prompt_tokens=64, chunk_size=8, max_tool_calls=2,
                          tool_limit_action="stop", num_slots=8)
    v = validation_rollout(train, 5)
    assert (v.policy, v.total_rollouts, v.greedy, v.num_slots) == ("trajectory", 1, True, 5)
    assert (v.capacity, v.deterministic, v.max_response_tokens, v.max_prompt_tokens, v.chunk_size,
            v.max_tool_calls, v.tool_limit_action) == (300, False, 40, 64, 8, 2, "stop")
