"""Two CPU processes with jax.distributed on 127.0.0.1 run like one process: the sharded
update, and a whole RL run (each process rolls out its own half of every step's prompts;
same trajectories, loss, gradient norm and exported parameters as one process)."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from arpo_jax.config import load_config
from arpo_jax.models import load_hf
from arpo_jax.training.distributed import initialize_from_env
from arpo_jax.training.rl import RLRunner
from arpo_jax.training.rl_config import RLConfig
from tests.rollout.scripted import save_scripted, write_questions

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n: int, *args) -> None:
    port = _free_port()
    procs = []
    for i in range(n):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if n > 1:
            env.update(ARPO_COORDINATOR=f"127.0.0.1:{port}", ARPO_NUM_PROCESSES=str(n), ARPO_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    _run(1, "update", tmp_path / "one.json")
    _run(2, "update", tmp_path / "two.json")
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["processes"] == 1 and not one["distributed"]
    assert two["processes"] == 2 and two["devices"] == 2 and two["distributed"]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["embed_sum"], one["embed_sum"], rtol=1e-5)
    assert one["losses"][1] != one["losses"][0]  # the first step changed the policy


def _rl_yaml(root: Path, out: Path, prompts_per_step: int = 4, **train) -> Path:
    ckpt = root / "scripted"
    if not ckpt.exists():
        save_scripted(ckpt)
    questions = write_questions(root / "questions" / "test.jsonl", 8)
    cfg = {
        "model": {"path": str(ckpt), "mesh": [1, -1, 1]},  # params split over the 2 processes
        "data": {"train_files": [str(questions)], "prompts_per_step": prompts_per_step},
        "rollout": {"policy": "arpo", "total_rollouts": 4, "initial_rollouts": 2, "max_response_tokens": 40,
                    "max_prompt_tokens": 64, "chunk_size": 8, "entropy_tokens": 3},
        "tools": {"protocol": {"tools": ["python"]}, "python": {"timeout_s": 20}},
        "reward": {"name": "math"},
        "optimizer": {"lr": 0.002},
        "train": {"steps": 2, "mini_batches": 2, "micro_batch_size": 2, "old_logprobs": "recompute",
                  "save_every": 0, "async_checkpoint": False, "out_dir": str(out), **train},
        "logging": {"progress": False, "tensorboard": False},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _adam_drift_bound(cfg: RLConfig) -> float:
    """The most two runs of ``cfg``'s AdamW updates can move one parameter apart, whatever their
    gradients: an update moves it by lr·|m̂/(sqrt(v̂)+eps)| (+ weight decay, which only pulls
    two values together), and by Cauchy–Schwarz the bias-corrected |m̂/sqrt(v̂)| at update k is
    at most c_k = (1-b1)/(1-b1^k)·sqrt((1-b2^k)/(1-b2)·Σ_{j<k}(b1²/b2)^j) (1 at k=1, ~1 for
    the first updates); any schedule stays at or below the peak lr: 2·lr·Σ_k c_k."""
    o, t = cfg.optimizer, cfg.train
    updates = t.steps * t.mini_batches * t.ppo_epochs
    c = [(1 - o.b1) / (1 - o.b1**k)
         * math.sqrt((1 - o.b2**k) / (1 - o.b2) * sum((o.b1**2 / o.b2) ** j for j in range(k)))
         for k in range(1, updates + 1)]
    return 2 * o.lr * sum(c)


def _dump(out: Path) -> list[tuple]:
    """Every step's trajectories as comparable rows (process order differs from uid order)."""
    rows = []
    for f in sorted((out / "rollouts").glob("step_*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            rows.append((r["step"], r["prompt_index"], r["response"], r["reward"], round(r["advantage"], 5),
                         r["depth"], r["branch_pos"], r["mask"]))
    return sorted(rows)


@pytest.mark.slow
def test_rl_step_on_two_processes_matches_one(tmp_path):
    """ARPO with 2 mini-batches of 2 micro-batches and recomputed old log-probs, 2 steps:
    each process rolls out only its 2 of the 4 prompts; together they give exactly the
    single process's trajectories, rewards and advantages, and the updates (loss, gradient
    norm) and the exported parameters (multi-host ``save_hf``) match to fp32 tolerance."""
    one, two = tmp_path / "one", tmp_path / "two"
    cfg_path = _rl_yaml(tmp_path, one)
    _run(1, "rl", tmp_path / "one.json", cfg_path)
    _run(2, "rl", tmp_path / "two.json", _rl_yaml(tmp_path, two))
    ref = json.loads((tmp_path / "one.json.0").read_text())
    procs = [json.loads((tmp_path / f"two.json.{i}").read_text()) for i in range(2)]
    assert ref["calls"] == [{"prompts": 4, "offset": 0, "slots": 16}] * 2
    for i, p in enumerate(procs):
        assert p["processes"] == 2 and p["devices"] == 2
        assert p["calls"] == [{"prompts": 2, "offset": 2 * i, "slots": 8}] * 2  # its own half, every step
        # its copy of the policy is freed after each rollout: none is held through the updates
        assert p["weights_held_in_update"] == [False] * 4
    assert ref["weights_held_in_update"] == [True] * 4  # one process: the engine shares the trainer's arrays
    assert procs[1]["summary"]["exported"] == []  # process 0 writes (the dumps below hold no duplicates)

    assert _dump(two) == _dump(one)  # the union over processes is the single-process rollout
    m1, m2 = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert [r["step"] for r in m2] == [1, 2]
    for a, b in zip(m1, m2):
        for k in ("reward/mean", "reward/accuracy", "rollout/trajectories", "rollout/branches_per_prompt",
                  "rollout/tool_calls_per_traj", "rollout/generated_tokens", "rollout/response_length"):
            assert b[k] == a[k], k  # global values, not process 0's half
        for k in ("update/loss", "update/grad_norm", "logprob_gap/sampler_vs_trainer"):
            np.testing.assert_allclose(b[k], a[k], rtol=2e-5, atol=1e-6, err_msg=k)
    assert m1[0]["rollout/trajectories"] == 4 * 4 and m1[1]["update/grad_norm"] > 0

    exported = [Path(json.loads((tmp_path / f).read_text())["summary"]["exported"][-1])
                for f in ("one.json.0", "two.json.0")]
    assert exported[1].parent.parent == two
    (ma, _), (mb, _) = load_hf(exported[0]), load_hf(exported[1])
    before = load_hf(tmp_path / "scripted")[0]
    # The exported parameters agree only as far as Adam lets rounding noise through. The two runs
    # reduce the gradients in different orders, and Adam divides by sqrt(v): where a gradient is
    # itself at rounding level (e.g. an up_proj entry behind the scripted model's zeroed down_proj),
    # that noise changes the update's size or sign, not just its last bits (seen: 1.3e-6 apart,
    # 2e-4 relative). Each element can only be held to Adam's worst case, 2·lr·Σ c_k over the
    # run's updates (_adam_drift_bound, from the config: 0.016 for lr 0.002 and 2 steps × 2
    # mini-batches). No Adam run moves a parameter further than that, so the bound alone would
    # pass a wrong update (a wrong gradient sum across the processes moves them up to ~0.01
    # apart): the bulk must also agree to fp32 tolerance, as amplified noise needs a gradient at
    # rounding level, which few elements have (measured: 0, 0 and 1 of 9216 elements off for
    # embed, lm_head, up_proj; with one process's loss scaled by 1.5: 15%, 4% and 99%).
    bound = _adam_drift_bound(load_config(RLConfig, cfg_path))
    for name in ("embed", "lm_head", "up_proj"):
        get = (lambda m: m.layers[0].mlp.up_proj) if name == "up_proj" else (lambda m: getattr(m, name))  # noqa: E731
        a, b, a0 = (np.asarray(get(m)[...]) for m in (ma, mb, before))
        np.testing.assert_allclose(b, a, rtol=0, atol=bound, err_msg=name)
        off = ~np.isclose(b, a, rtol=1e-5, atol=1e-6)
        assert off.mean() <= 0.01, (name, int(off.sum()), off.size, float(np.abs(b - a).max()))
        assert np.abs(a - a0).max() > 1e-4, name  # the run trained


def test_rollout_copy_holds_the_global_values_and_in_bf16_gives_the_same_logits(tmp_path):
    """A tensor-parallel model over 2 processes: each process's rollout copy of the policy
    (local_copy) is whole on its own device with the global values; stored in the compute dtype
    it takes half the memory and gives the same logits. (Splitting the copy over a host's
    devices, local_mesh_shape, is checked in test_plan.py: CPU collectives are run here with
    one device per process.)"""
    _run(2, "copy", tmp_path / "copy.json")
    outs = [json.loads((tmp_path / f"copy.json.{i}").read_text()) for i in range(2)]
    for o in outs:
        assert o["global_mesh"] == {"data": 1, "fsdp": 1, "tensor": 2}
        assert o["local_mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and len(o["local_devices"]) == 1
        assert o["q_global"] == [32, 4, 8] and o["q_shard"] == [32, 4, 8]  # [D, N, H], gathered from 2 processes
        assert o["fully_addressable"] and o["same_values"]
        # stored in the compute dtype: half the bytes, the same logits (every weight is cast before use)
        assert o["half_dtypes"] == ["bfloat16"] and 2 * o["bytes"][1] == o["bytes"][0]
        assert o["same_logits"] and o["logits_finite"]
    assert outs[0]["local_devices"] != outs[1]["local_devices"]


def test_checkpoint_sealed_by_process_0_and_verified_by_both(tmp_path):
    """Two processes save arrays split over them: one checksum manifest per step covers both
    processes' files; a flipped byte in a file process 1 wrote makes both fall back to step 1."""
    _run(2, "ckpt", tmp_path / "ck.json", tmp_path / "ck")
    outs = [json.loads((tmp_path / f"ck.json.{i}").read_text()) for i in range(2)]
    files = outs[0]["files"]
    assert any(f.startswith("state/ocdbt.process_0/d/") for f in files)
    assert any(f.startswith("state/ocdbt.process_1/d/") for f in files)
    for o in outs:
        assert (o["restored"], o["skipped"], o["values_ok"]) == (1, [2], True)
    [line] = outs[0]["messages"]  # process 0 prints
    assert "checkpoint step 2" in line and "state/ocdbt.process_1/d/" in line and "sha256 mismatch" in line
    assert line.endswith("falling back to step 1") and outs[1]["messages"] == []
    assert sorted(os.listdir(tmp_path / "ck")) == ["1"]


@pytest.mark.parametrize("overrides,needle", [
    ([], "data.prompts_per_step (3) must split evenly over the 2 JAX processes"),
    (["data.prompts_per_step=4", "train.mini_batches=4"],
     "data.prompts_per_step (4) / the 2 JAX processes must be a multiple of train.mini_batches (4)"),
])
def test_prompts_per_step_must_split_over_the_processes(tmp_path, monkeypatch, overrides, needle):
    path = _rl_yaml(tmp_path, tmp_path / "run", prompts_per_step=3)
    cfg = load_config(RLConfig, path, overrides)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError) as e:
        RLRunner(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_partial_environment_is_an_error():
    with pytest.raises(ValueError, match="ARPO_PROCESS_ID"):
        initialize_from_env({"ARPO_COORDINATOR": "127.0.0.1:1234", "ARPO_NUM_PROCESSES": "2"})
    assert initialize_from_env({}) is False
