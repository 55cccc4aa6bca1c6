"""Kill/resume of ``arpo-jax sft`` processes: SIGKILL at a random step, a corrupt last checkpoint,
SIGTERM. Every resumed run must repeat the uninterrupted run's metrics bit for bit."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .sft_tiny import build_tokenizer, sft_yaml, write_sharegpt

EXACT = ("loss", "grad_norm", "accuracy", "num_tokens", "skipped", "lr", "epoch")
STEPS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_resume")
    build_tokenizer(root / "tok")
    data = write_sharegpt(root / "train.jsonl", 24)
    yaml_path = sft_yaml(root / "cfg.yaml", root / "tok", data, root / "unused", steps=STEPS)
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=str(root / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    ref = root / "ref"
    proc = _start(yaml_path, ref, env)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return root, yaml_path, env, _metrics(ref)


def _start(yaml_path, out_dir, env, *extra):
    cmd = [sys.executable, "-m", "arpo_jax.cli", "sft", str(yaml_path), f"train.out_dir={out_dir}", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metrics(out_dir):
    path = out_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _wait_for_step(proc, out_dir, step, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = _metrics(out_dir)
        if rows and rows[-1]["step"] >= step:
            return rows[-1]["step"]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


def _steps(ckpt_dir):
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


def _resume(yaml_path, out_dir, env):
    proc = _start(yaml_path, out_dir, env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _same_as_reference(rows, ref):
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for a, b in zip(rows, ref):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}, (a, b)


def test_sigkill_at_a_random_step_then_resume_is_exact_even_from_a_corrupt_checkpoint(setup):
    root, yaml_path, env, ref = setup
    out = root / "killed"
    kill_at = random.Random().randint(5, STEPS - 3)
    proc = _start(yaml_path, out, env, "train.debug_step_sleep=0.3")
    _wait_for_step(proc, out, kill_at)
    while len(_steps(out / "checkpoints")) < 2:  # the corrupt case below needs an older step to fall back to
        _wait_for_step(proc, out, _metrics(out)[-1]["step"] + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    shutil.copytree(out, root / "corrupt")

    summary, _ = _resume(yaml_path, out, env)
    assert summary["status"] == "finished" and summary["step"] == STEPS
    _same_as_reference(_metrics(out), ref)

    # The same kill, but the newest checkpoint is damaged (a write cut short): fall back to the previous one.
    ckpt = root / "corrupt" / "checkpoints"
    steps = _steps(ckpt)
    shutil.rmtree(ckpt / str(steps[-1]) / "state")
    summary, err = _resume(yaml_path, root / "corrupt", env)
    assert f"checkpoint step {steps[-1]}" in err and "incomplete or corrupt" in err, err[-3000:]
    assert f"falling back to step {steps[-2]}" in err
    _same_as_reference(_metrics(root / "corrupt"), ref)


def test_sigterm_writes_a_final_checkpoint_exits_0_and_resumes_exactly(setup):
    root, yaml_path, env, ref = setup
    out = root / "term"
    proc = _start(yaml_path, out, env, "train.debug_step_sleep=0.3", "train.save_every=100")
    _wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "preempted" and 3 <= status["step"] < STEPS
    assert "SIGTERM received: writing a final checkpoint" in err
    assert _steps(out / "checkpoints") == [status["step"]]
    summary, err = _resume(yaml_path, out, env)
    assert summary["status"] == "finished" and f"resumed from step {status['step']}" in err
    _same_as_reference(_metrics(out), ref)
