"""The scripts run for real against a fake gcloud (tests/tpu_scripts/fake_gcloud.sh) that
simulates two TPU workers as local directories: gcloud gets exactly the printed argv, the
remote commands work in a shell (data copy, detached launch, per-worker logs, stop)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.tpu_scripts.helpers import run_script

BASE = ["--name", "arpo-pod", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-16"]

FAKE_TRAINER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$HOME/trainer_args"
env > "$HOME/trainer_env"
echo "step 1 on $HOME"
exec sleep 30
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def test_real_run_passes_the_printed_argv_to_gcloud(fake_gcloud):
    path, env, calls = fake_gcloud
    r = run_script("create.sh", *BASE, "--queued", "--spot", "--project", "p", path=path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # commands are echoed on stderr when they run
    assert "+ gcloud compute tpus queued-resources create arpo-pod" in r.stderr
    assert calls() == [
        ["compute", "tpus", "queued-resources", "create", "arpo-pod", "--zone=us-west4-a", "--node-id=arpo-pod",
         "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", "--spot", "--project=p"],
        ["compute", "tpus", "queued-resources", "describe", "arpo-pod", "--zone=us-west4-a",
         "--format=value(state.state)", "--project=p"],
    ]  # fmt: skip
    assert "is ACTIVE" in r.stderr


def test_queued_create_waits_for_active(fake_gcloud, tmp_path):
    path, env, calls = fake_gcloud
    states = tmp_path / "states"
    states.write_text("WAITING_FOR_RESOURCES\nPROVISIONING\nACTIVE\n")
    r = run_script("create.sh", *BASE, "--queued", path=path, env={**env, "FAKE_QR_STATES": str(states)})
    assert r.returncode == 0, r.stderr
    assert [c[3] for c in calls()] == ["create", "describe", "describe", "describe"]
    assert "is WAITING_FOR_RESOURCES" in r.stderr and "is PROVISIONING" in r.stderr

    states.write_text("PROVISIONING\nFAILED\n")
    r = run_script("create.sh", *BASE, "--queued", path=path, env={**env, "FAKE_QR_STATES": str(states)})
    assert r.returncode != 0 and "queued resource arpo-pod is FAILED" in r.stderr


@pytest.mark.skipif(not (shutil.which("setsid") and shutil.which("tar")), reason="needs setsid and tar")
def test_data_launch_logs_stop_on_simulated_workers(fake_gcloud, tmp_path):
    path, env, calls = fake_gcloud
    root = Path(env["FAKE_TPU_ROOT"])
    workers = [root / "worker-0", root / "worker-1"]
    for w in workers:  # what install.sh would have left: the project with its venv
        trainer = w / "arpo_jax/.venv/bin/arpo-jax"
        trainer.parent.mkdir(parents=True)
        trainer.write_text(FAKE_TRAINER)
        trainer.chmod(trainer.stat().st_mode | stat.S_IEXEC)
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train/part-0.parquet").write_text("rows")

    pids: list[int] = []
    try:
        r = run_script("data.sh", *BASE, "--data", str(data), path=path, env=env)
        assert r.returncode == 0, r.stderr
        for w in workers:
            assert (w / "arpo_data/train/part-0.parquet").read_text() == "rows"
        assert not list(tmp_path.glob("arpo_jax-data-*.tar.gz"))  # the local tarball is removed

        r = run_script(
            "launch.sh", *BASE, "--config", "configs/arpo_qwen2.5_7b_reasoning.yaml", "--data", str(data),
            "--checkpoint-dir", "gs://b/ckpt", "--mesh", "1,-1,1", "--env", "MSG=hello world",
            "train.total_steps=3", "note=a b",
            path=path, env=env,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("started on") == 2
        for w in workers:
            pid_file = w / "arpo_logs/train.pid"
            for _ in range(100):
                log = w / "arpo_logs/train.log"  # written after the args and the env
                if pid_file.exists() and log.exists() and log.read_text().endswith("\n"):
                    break
                time.sleep(0.05)
            pids.append(int(pid_file.read_text()))
            assert (w / "trainer_args").read_text().splitlines() == [
                "train", "configs/arpo_qwen2.5_7b_reasoning.yaml", f"data.root={w}/arpo_data",
                "train.checkpoint_dir=gs://b/ckpt", "mesh.shape=[1,-1,1]", "train.total_steps=3", "note=a b",
            ]  # fmt: skip
            trainer_env = (w / "trainer_env").read_text().splitlines()
            assert "MSG=hello world" in trainer_env and "PYTHONUNBUFFERED=1" in trainer_env
            assert (w / "arpo_logs/train.log").read_text() == f"step 1 on {w}\n"
        assert all(_alive(p) for p in pids)  # detached: still running after launch.sh returned

        out = tmp_path / "collected"
        r = run_script("logs.sh", *BASE, "--collect", str(out), path=path, env=env)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in out.iterdir()) == ["0.log", "1.log"]
        assert (out / "1.log").read_text() == f"step 1 on {workers[1]}\n"

        r = run_script("launch.sh", *BASE, "--stop", path=path, env=env)
        assert r.returncode == 0, r.stderr
        for _ in range(100):
            if not any(_alive(p) for p in pids):
                break
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
        assert not (workers[0] / "arpo_logs/train.pid").exists()
        assert [c[2:4] for c in calls()][-1] == ["tpu-vm", "ssh"]
    finally:
        for p in pids:  # only the fake trainers this test started
            if _alive(p):
                os.kill(p, signal.SIGKILL)
