"""The TPU scripts with --dry-run and no gcloud on PATH: the exact gcloud commands they print
for a v5e-64 pod and a v5p-8 VM, the queued / spot / data / logs / delete paths."""

from __future__ import annotations

import subprocess

import pytest

from tests.tpu_scripts.helpers import BASH, DRY_TMP, SCRIPTS, run_script

CONFIG = "configs/arpo_qwen2.5_7b_reasoning.yaml"

# What install.sh runs on every worker after the code is there: find (or apt-install) a
# Python >= 3.11 with venv, then the venv and the project with the tpu extra.
PYTHON_SETUP = (
    '{ PY=; for p in python3.13 python3.12 python3.11 python3; do if $p -c "import sys, ensurepip; '
    'sys.exit(sys.version_info < (3, 11))" >/dev/null 2>&1; then PY=$p; break; fi; done; '
    'if [ -z "$PY" ]; then sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq '
    "&& sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "
    "python3.11 python3.11-venv && PY=python3.11; fi; }"
)
VENV_INSTALL = (
    'cd ~/arpo_jax && "$PY" -m venv .venv && .venv/bin/pip install -q --upgrade pip '
    '&& .venv/bin/pip install -e ".[tpu]"'
)
LAUNCH_TAIL = (
    "> ~/arpo_logs/train.log 2>&1 < /dev/null & } && echo $! > ~/arpo_logs/train.pid "
    '&& echo "started on $(hostname): pid $!, log ~/arpo_logs/train.log"'
)


def test_v5e_64_pod_run_all(dry):
    r = dry(
        "run_all.sh",
        "--name", "arpo-pod", "--zone", "us-west4-a", "--project", "my-proj",
        "--accelerator-type", "v5litepod-64", "--spot",
        "--repo-url", "https://github.com/ORG/arpo_jax.git", "--ref", "main",
        "--data", "gs://my-bucket/arpo/data", "--checkpoint-dir", "gs://my-bucket/arpo/ckpt",
        "--env", "WANDB_MODE=offline", "--env", "JAX_COMPILATION_CACHE_DIR=gs://my-bucket/jax-cache",
        "--config", CONFIG, "train.total_steps=100", "rollout.beam_size=2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ssh = "gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=all"
    assert r.commands == [
        "gcloud compute tpus tpu-vm create arpo-pod --zone=us-west4-a --accelerator-type=v5litepod-64 "
        "--version=v2-alpha-tpuv5-lite --spot --project=my-proj",
        f"{ssh} --command='{{ [ -d ~/arpo_jax/.git ] || git clone https://github.com/ORG/arpo_jax.git ~/arpo_jax; }} "
        "&& git -C ~/arpo_jax fetch --quiet origin main && git -C ~/arpo_jax checkout --quiet --force FETCH_HEAD "
        f"&& {PYTHON_SETUP} && {VENV_INSTALL}' --project=my-proj",
        f"{ssh} --command='mkdir -p ~/arpo_data && gcloud storage rsync --recursive gs://my-bucket/arpo/data "
        "~/arpo_data' --project=my-proj",
        f"{ssh} --command='cd ~/arpo_jax && mkdir -p ~/arpo_logs "
        "&& export PYTHONUNBUFFERED=1 WANDB_MODE=offline JAX_COMPILATION_CACHE_DIR=gs://my-bucket/jax-cache "
        f"&& {{ setsid nohup .venv/bin/arpo-jax train {CONFIG} "
        'data.root="$HOME"/arpo_data train.checkpoint_dir=gs://my-bucket/arpo/ckpt '
        f"train.total_steps=100 rollout.beam_size=2 {LAUNCH_TAIL}' --project=my-proj",
    ]
    # every ssh step targets every worker of the slice
    assert all("--worker=all" in c for c in r.commands[1:])


def test_v5p_8_vm_run_all(dry):
    r = dry(
        "run_all.sh",
        "--name", "arpo-v5p", "--zone", "us-east5-a", "--accelerator-type", "v5p-8", "--reserved",
        "--src", ".", "--config", CONFIG, "--mesh", "1,4,1", "--env", "WANDB_MODE=offline",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    tarball = f"{DRY_TMP}/arpo_jax-src-arpo-v5p.tar.gz"
    ssh = "gcloud compute tpus tpu-vm ssh arpo-v5p --zone=us-east5-a --worker=all"
    assert r.commands == [
        "gcloud compute tpus tpu-vm create arpo-v5p --zone=us-east5-a --accelerator-type=v5p-8 "
        "--version=v2-alpha-tpuv5 --reserved",
        f"tar -czf {tarball} --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ "
        "--exclude='*.egg-info' --exclude=.pytest_cache --exclude=.hypothesis -C . .",
        f"gcloud compute tpus tpu-vm scp {tarball} arpo-v5p:arpo_jax-src.tar.gz --zone=us-east5-a --worker=all",
        f"rm -f {tarball}",
        f"{ssh} --command='mkdir -p ~/arpo_jax && tar -xzf ~/arpo_jax-src.tar.gz -C ~/arpo_jax "
        f"&& rm -f ~/arpo_jax-src.tar.gz && {PYTHON_SETUP} && {VENV_INSTALL}'",
        f"{ssh} --command='cd ~/arpo_jax && mkdir -p ~/arpo_logs && export PYTHONUNBUFFERED=1 WANDB_MODE=offline "
        f'&& {{ setsid nohup .venv/bin/arpo-jax train {CONFIG} "mesh.shape=[1,4,1]" {LAUNCH_TAIL}\'',
    ]
    assert "3/4 data: skipped (no --data)" in r.stderr


def test_launch_v5e_64_pod(dry):
    """launch.sh alone: the line run on all 16 workers, with data dir, checkpoints, mesh, env."""
    r = dry(
        "launch.sh", CONFIG, "--name", "arpo-pod", "--zone", "us-west4-a",
        "--accelerator-type", "v5litepod-64", "--data-dir", "~/arpo_data",
        "--checkpoint-dir", "gs://b/ckpt", "--mesh", "1,-1,1", "--env", "WANDB_MODE=offline",
        "train.total_steps=10",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=all --command='cd ~/arpo_jax "
        "&& mkdir -p ~/arpo_logs && export PYTHONUNBUFFERED=1 WANDB_MODE=offline "
        f'&& {{ setsid nohup .venv/bin/arpo-jax train {CONFIG} data.root="$HOME"/arpo_data '
        f'train.checkpoint_dir=gs://b/ckpt "mesh.shape=[1,-1,1]" train.total_steps=10 {LAUNCH_TAIL}\''
    ]


def test_launch_quotes_values_for_the_workers(dry):
    """Values with spaces and quotes reach the workers' shell intact: the printed line splits
    into the intended --command, and that command into the intended trainer argv."""
    r = dry(
        "launch.sh", "--name", "n", "--zone", "z", "--config", "my configs/c.yaml",
        "--env", "MSG=it's here", "--env", "A=$HOME", "--remote-dir", "/opt/arpo jax",
        "note=a b=c", "x.y=[1, 2]", "--foreground",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    remote = r.remote(0)
    assert remote == (
        "cd \"/opt/arpo jax\" && mkdir -p ~/arpo_logs && export PYTHONUNBUFFERED=1 MSG=\"it's here\" A='$HOME' "
        '&& .venv/bin/arpo-jax train "my configs/c.yaml" "note=a b=c" "x.y=[1, 2]" 2>&1 | tee ~/arpo_logs/train.log'
    )
    # the workers' shell would see exactly these words (checked with bash itself)
    words = subprocess.run(
        [BASH, "-c", "f() { printf '%s\\n' \"$@\"; }; f " + remote.split("&& ", 3)[3].split(" 2>&1")[0]],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert words == [".venv/bin/arpo-jax", "train", "my configs/c.yaml", "note=a b=c", "x.y=[1, 2]"]


def test_launch_stop(dry):
    r = dry("launch.sh", "--name", "n", "--zone", "z", "--stop")
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "gcloud compute tpus tpu-vm ssh n --zone=z --worker=all --command='if [ -f ~/arpo_logs/train.pid ]; "
        "then kill -TERM -- -$(cat ~/arpo_logs/train.pid) 2>/dev/null || true; rm -f ~/arpo_logs/train.pid; fi'"
    ]


def test_queued_resource_create_and_delete(dry):
    common = ["--name", "arpo-pod", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-64", "--queued"]
    r = dry("create.sh", *common, "--spot", "--project", "p1")
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "gcloud compute tpus queued-resources create arpo-pod --zone=us-west4-a --node-id=arpo-pod "
        "--accelerator-type=v5litepod-64 --runtime-version=v2-alpha-tpuv5-lite --spot --project=p1",
        "gcloud compute tpus queued-resources describe arpo-pod --zone=us-west4-a "
        "--format='value(state.state)' --project=p1",
    ]
    assert "ACTIVE" in r.stderr
    r = dry("create.sh", *common, "--no-wait")
    assert len(r.commands) == 1 and "--spot" not in r.commands[0]
    r = dry("delete.sh", *common)
    assert r.commands == ["gcloud compute tpus queued-resources delete arpo-pod --zone=us-west4-a --force --quiet"]


@pytest.mark.parametrize(
    ("accelerator", "runtime"),
    [
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5litepod-64", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
        ("v6e-64", "v2-alpha-tpuv6e"),
    ],
)
def test_runtime_version_from_generation(dry, accelerator, runtime):
    r = dry("create.sh", "--name", "n", "--zone", "z", "--accelerator-type", accelerator)
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        f"gcloud compute tpus tpu-vm create n --zone=z --accelerator-type={accelerator} --version={runtime}"
    ]


def test_create_options(dry):
    r = dry(
        "create.sh", "--name=n", "--zone=z", "--accelerator-type=v6e-8", "--runtime-version=v2-alpha-tpuv6e-x",
        "--spot", "--internal-ip", "--create-flag=--service-account=sa@p.iam.gserviceaccount.com",
        "--create-flag", "--labels=team=rl",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "gcloud compute tpus tpu-vm create n --zone=z --accelerator-type=v6e-8 --version=v2-alpha-tpuv6e-x "
        "--spot --internal-ips --service-account=sa@p.iam.gserviceaccount.com --labels=team=rl"
    ]


def test_delete_tpu_vm(dry):
    r = dry("delete.sh", "--name", "arpo-v5p", "--zone", "us-east5-a", "--project", "my-proj")
    assert r.returncode == 0, r.stderr
    assert r.commands == ["gcloud compute tpus tpu-vm delete arpo-v5p --zone=us-east5-a --quiet --project=my-proj"]
    r = dry("delete.sh", "--name", "arpo-v5p", "--zone", "us-east5-a", "--async")
    assert r.commands == ["gcloud compute tpus tpu-vm delete arpo-v5p --zone=us-east5-a --quiet --async"]


def test_logs_stream_and_collect(dry):
    base = ["--name", "arpo-pod", "--zone", "us-west4-a"]
    r = dry("logs.sh", *base)
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=all "
        "--command='tail -n 100 -F ~/arpo_logs/train.log | sed -u \"s/^/[$(hostname)] /\"'"
    ]
    r = dry("logs.sh", *base, "--worker", "0", "--lines", "20")
    assert r.commands[0].startswith("gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=0 ")
    assert "tail -n 20 -F" in r.commands[0]
    r = dry("logs.sh", *base, "--collect", "logs/arpo-pod", "--internal-ip")
    assert r.commands == [
        "mkdir -p logs/arpo-pod",
        "gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=all --internal-ip "
        "--command='cat ~/arpo_logs/train.log' --output-directory=logs/arpo-pod",
    ]
    r = dry("logs.sh", *base, "--collect", "logs/arpo-pod", "--worker", "3")
    assert r.commands == [
        "mkdir -p logs/arpo-pod",
        "gcloud compute tpus tpu-vm scp --recurse arpo-pod:arpo_logs logs/arpo-pod/worker-3 "
        "--zone=us-west4-a --worker=3",
    ]


def test_data_rsync_and_copy(dry):
    base = ["--name", "arpo-pod", "--zone", "us-west4-a"]
    r = dry("data.sh", *base, "--data", "gs://b/arpo data")
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=all "
        "--command='mkdir -p ~/arpo_data && gcloud storage rsync --recursive \"gs://b/arpo data\" ~/arpo_data'"
    ]
    r = dry("data.sh", *base, "--data", "gs://b/d", "--use-gsutil", "--data-dir", "/mnt/disk/data")
    assert r.remote(0) == "mkdir -p /mnt/disk/data && gsutil -m rsync -r gs://b/d /mnt/disk/data"
    r = dry("data.sh", *base, "--data", "local/data")
    tarball = f"{DRY_TMP}/arpo_jax-data-arpo-pod.tar.gz"
    assert r.commands == [
        f"tar -czf {tarball} -C local/data .",
        f"gcloud compute tpus tpu-vm scp {tarball} arpo-pod:arpo_jax-data.tar.gz --zone=us-west4-a --worker=all",
        f"rm -f {tarball}",
        "gcloud compute tpus tpu-vm ssh arpo-pod --zone=us-west4-a --worker=all --command='mkdir -p ~/arpo_data "
        "&& tar -xzf ~/arpo_jax-data.tar.gz -C ~/arpo_data && rm -f ~/arpo_jax-data.tar.gz'",
    ]


def test_install_options(dry):
    r = dry(
        "install.sh", "--name", "n", "--zone", "z", "--repo-url", "git@github.com:ORG/arpo_jax.git",
        "--python", "python3.12", "--remote-dir", "/opt/arpo", "--extra", "tpu,test",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.remote(0) == (
        "{ [ -d /opt/arpo/.git ] || git clone git@github.com:ORG/arpo_jax.git /opt/arpo; } "
        "&& git -C /opt/arpo fetch --quiet origin HEAD && git -C /opt/arpo checkout --quiet --force FETCH_HEAD "
        '&& PY=python3.12 && { "$PY" -c "import ensurepip" >/dev/null 2>&1 || { '
        "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq && "
        'sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$PY" "$PY-venv"; }; } '
        '&& cd /opt/arpo && "$PY" -m venv .venv && .venv/bin/pip install -q --upgrade pip '
        '&& .venv/bin/pip install -e ".[tpu,test]"'
    )


def test_remote_commands_are_valid_shell(dry, tmp_path):
    """Every --command the scripts print parses as shell (bash -n)."""
    runs = [
        dry("install.sh", "--name", "n", "--zone", "z", "--src", "."),
        dry("install.sh", "--name", "n", "--zone", "z", "--repo-url", "u", "--python", "python3.11"),
        dry("data.sh", "--name", "n", "--zone", "z", "--data", "gs://b/d"),
        dry("data.sh", "--name", "n", "--zone", "z", "--data", "d"),
        dry("launch.sh", "--name", "n", "--zone", "z", "c.yaml", "--env", "Q=it's", "a=b c", "--data", "gs://x"),
        dry("launch.sh", "--name", "n", "--zone", "z", "c.yaml", "--foreground", "--log-dir", "/var/log/a b"),
        dry("launch.sh", "--name", "n", "--zone", "z", "--stop"),
        dry("logs.sh", "--name", "n", "--zone", "z"),
        dry("logs.sh", "--name", "n", "--zone", "z", "--collect", str(tmp_path)),
    ]
    seen = 0
    for r in runs:
        assert r.returncode == 0, r.stderr
        for i, line in enumerate(r.commands):
            if "--command=" in line:
                subprocess.run([BASH, "-n", "-c", r.remote(i)], check=True)
                seen += 1
    assert seen == len(runs)


def test_every_script_has_help(no_gcloud_path):
    scripts = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")
    expected = {"create.sh", "install.sh", "data.sh", "launch.sh", "logs.sh", "delete.sh", "run_all.sh",
                "launch_gpu.sh"}
    assert expected <= set(scripts)
    for s in scripts:
        r = run_script(s, "--help", path=no_gcloud_path)
        assert r.returncode == 0, (s, r.stderr)
        assert r.stdout.startswith("Usage: tpu_scripts/" + s), s
        assert "--dry-run" in r.stdout, s
