"""``arpo-jax train`` fails closed without its sandbox, and says so when the fallback is chosen."""

import json
import os
import subprocess
import sys

from tests.tools.conftest import rlimit_python
from tests.training.test_rl import _yaml, setup  # noqa: F401  (module fixture)


def test_train_refuses_a_broken_bubblewrap_with_one_line(setup, tmp_path):  # noqa: F811
    root, ckpt, questions = setup
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    path = _yaml(tmp_path, ckpt, questions)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PATH=f"{fake.parent}:{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "arpo_jax.cli", "train", str(path), f"train.out_dir={tmp_path / 'o'}"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: python tool: the bwrap sandbox does not work here")
    assert "uid map" in lines[0] and "tools.python.sandbox=rlimit" in lines[0]
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_train_with_the_rlimit_fallback_runs_and_records_it(setup, tmp_path):  # noqa: F811
    root, ckpt, questions = setup
    path = _yaml(tmp_path, ckpt, questions, train={"steps": 1, "save_every": 0})
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "arpo_jax.cli", "train", str(path), f"train.out_dir={out}",
                        "tools.python.sandbox=rlimit", f"tools.python.python_executable={rlimit_python()}"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING: python tool in the weaker rlimit sandbox" in r.stdout + r.stderr
    assert json.loads((out / "status.json").read_text())["python_sandbox"] == "rlimit"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recorded = [row["tools/python_sandbox_rlimit"] for row in rows if "tools/python_sandbox_rlimit" in row]
    assert recorded == [1.0]  # one step, recorded in its metrics
