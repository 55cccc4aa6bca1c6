"""launch_gpu.sh --dry-run: venv with the cuda extra, GPU XLA flags, the multi-host ARPO_*
variables and the arpo-jax train line with the mesh override. It needs no gcloud."""

from __future__ import annotations

from tests.tpu_scripts.helpers import run_script

CONFIG = "configs/arpo_qwen2.5_7b_reasoning.yaml"


def test_single_host(dry):
    r = dry("launch_gpu.sh", CONFIG, "--mesh", "1,8,1", "--python", "python3.11", "train.total_steps=100")
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "python3.11 -m venv .venv",
        ".venv/bin/pip install -e '.[cuda]'",
        "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
        f".venv/bin/arpo-jax train {CONFIG} 'mesh.shape=[1,8,1]' train.total_steps=100",
    ]
    assert "ARPO_" not in r.stdout


def test_several_hosts_pass_the_coordinator_through_the_environment(dry):
    r = dry(
        "launch_gpu.sh", "--config", CONFIG, "--mesh", "2,8,1", "--skip-install",
        "--coordinator", "10.0.0.2:1234", "--num-processes", "2", "--process-id", "1",
        "--env", "NCCL_DEBUG=WARN", "--xla-flags", "--xla_gpu_enable_command_buffer=", "--mem-fraction", "0.8",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.commands == [
        "export XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer='",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.8",
        "export NCCL_DEBUG=WARN",
        "export ARPO_COORDINATOR=10.0.0.2:1234",
        "export ARPO_NUM_PROCESSES=2",
        "export ARPO_PROCESS_ID=1",
        f".venv/bin/arpo-jax train {CONFIG} 'mesh.shape=[2,8,1]'",
    ]


def test_existing_xla_flags_are_kept(dry):
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.7"}
    r = dry("launch_gpu.sh", CONFIG, "--skip-install", env=env)
    assert r.commands[:2] == [
        "export XLA_FLAGS='--xla_dump_to=/tmp/dump --xla_gpu_enable_latency_hiding_scheduler=true'",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.7",
    ]
    env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    r = dry("launch_gpu.sh", CONFIG, "--skip-install", env=env)
    assert r.commands[0] == "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=false"


def test_default_python_and_config_path(dry, no_gcloud_path, tmp_path):
    # no Python >= 3.11 on this PATH: the dry run falls back to python3, a real run would stop
    r = dry("launch_gpu.sh", CONFIG)
    assert r.commands[0] == "python3 -m venv .venv"
    r = run_script("launch_gpu.sh", CONFIG, path=no_gcloud_path)
    assert r.returncode != 0 and "no Python >= 3.11" in r.stderr and r.commands == []
    # a config given relative to another directory is made absolute (the run is in the repo root)
    (tmp_path / "my.yaml").write_text("{}\n")
    r = run_script("launch_gpu.sh", "my.yaml", "--skip-install", "--dry-run", path=no_gcloud_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.commands[-1] == f".venv/bin/arpo-jax train {tmp_path}/my.yaml"


def test_errors(dry):
    for args, needle in [
        ((), "missing required argument --config"),
        ((CONFIG, "--coordinator", "h:1"), "all of --coordinator"),
        ((CONFIG, "--coordinator", "h", "--num-processes", "2", "--process-id", "0"), "HOST:PORT"),
        ((CONFIG, "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"), "not below"),
        ((CONFIG, "--mesh", "8"), "--mesh"),
        ((CONFIG, "--mem-fraction", "2"), "--mem-fraction"),
        ((CONFIG, "--zone", "z"), "unknown option --zone"),
    ]:
        r = dry("launch_gpu.sh", *args)
        assert r.returncode != 0 and r.commands == [], args
        assert needle in r.stderr, (args, r.stderr)
