"""``arpo-jax tools check``: reports the sandbox and its limits, self-tests it, exits 1 when it does not hold."""

import json
import os
import subprocess
import sys

from .conftest import IN_CI, rlimit_python


def _check(*args, env=None):
    return subprocess.run([sys.executable, "-m", "arpo_jax.cli", "tools", "check", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_check_reports_bubblewrap_and_its_self_test_passes():
    r = _check("--json")
    report = json.loads(r.stdout)
    if "error" in report and not IN_CI:
        import pytest

        pytest.skip(report["error"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["limits"]["mode"] == "bwrap" and report["ok"]
    cases = {row["case"] for row in report["self_test"]}
    assert {"host file unreadable", "memory cap is per call", "process cap holds", "deadline kills"} <= cases
    for key in ("interpreter", "uid", "memory", "cpu_seconds", "timeout_s", "output", "disk", "network"):
        assert report["limits"][key], key


def test_check_of_the_fallback_names_landlock_and_passes(tmp_path):
    r = _check("tools.python.sandbox=rlimit", f"tools.python.python_executable={rlimit_python()}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "python tool sandbox: rlimit" in r.stdout and "landlock_abi" in r.stdout
    assert "result: contained" in r.stdout


def test_check_exits_1_with_the_reason_when_bwrap_is_broken(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    r = _check("--no-self-test", env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"))
    assert r.returncode == 1
    assert r.stdout.startswith("UNAVAILABLE: python tool: the bwrap sandbox does not work here")
    assert "Operation not permitted" in r.stdout and "apt-get install bubblewrap" in r.stdout


def test_check_rejects_an_unknown_key():
    r = _check("tools.python.sandbx=rlimit")
    assert r.returncode == 2 and "tools.python.sandbx" in r.stderr
