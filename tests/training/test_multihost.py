"""Two CPU processes with jax.distributed on 127.0.0.1 run the sharded update like one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arpo_jax.training.distributed import initialize_from_env

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n: int, out: Path) -> dict:
    port = _free_port()
    procs = []
    for i in range(n):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if n > 1:
            env.update(ARPO_COORDINATOR=f"127.0.0.1:{port}", ARPO_NUM_PROCESSES=str(n), ARPO_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = _run(1, tmp_path / "one.json")
    two = _run(2, tmp_path / "two.json")
    assert one["processes"] == 1 and not one["distributed"]
    assert two["processes"] == 2 and two["devices"] == 2 and two["distributed"]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["embed_sum"], one["embed_sum"], rtol=1e-5)
    assert one["losses"][1] != one["losses"][0]  # the first step changed the policy


def test_partial_environment_is_an_error():
    with pytest.raises(ValueError, match="ARPO_PROCESS_ID"):
        initialize_from_env({"ARPO_COORDINATOR": "127.0.0.1:1234", "ARPO_NUM_PROCESSES": "2"})
    assert initialize_from_env({}) is False
