"""Shared helpers of the tool tests: sandbox factories and process-leak checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from arpo_jax.tools import PythonTool, PythonToolConfig, SandboxUnavailable
from arpo_jax.tools.fallback import rlimit_problem
from arpo_jax.tools.procs import find_pids

REPO = Path(__file__).resolve().parents[2]
SEARCH_CACHE = REPO.parent / "shared" / "data" / "arpo" / "search_cache.json"

# Small limits keep the hostile battery fast; every case must end within TIMEOUT_S + SLACK_S.
TIMEOUT_S = 2.0
SLACK_S = 3.0


IN_CI = os.environ.get("CI", "").lower() == "true"


def rlimit_python() -> str:
    """An interpreter the fallback can run: ours, or (as root, when ours lives in a root-only
    directory) the system's /usr/bin/python3 (setup.sh installs its numpy)."""
    cfg = PythonToolConfig(sandbox="rlimit")
    if rlimit_problem(cfg, sys.executable) is None:
        return sys.executable
    return "/usr/bin/python3"


def hostile_config(mode: str, **overrides) -> PythonToolConfig:
    """Tight limits for the hostile battery."""
    kw = dict(sandbox=mode, timeout_s=TIMEOUT_S, memory_bytes=1 << 30, tmp_bytes=16 << 20,
              max_file_bytes=8 << 20, output_kill_bytes=4 << 20, max_output_chars=2000, max_processes=32)
    if mode == "rlimit":
        kw["python_executable"] = rlimit_python()
    return PythonToolConfig(**{**kw, **overrides})


def make_tool(mode: str, **overrides) -> PythonTool:
    """A PythonTool in ``mode``. Where bubblewrap cannot run it skips, except in CI (CI=true),
    where the sandbox the project ships must be tested: there it fails with the reason."""
    try:
        return PythonTool(hostile_config(mode, **overrides))
    except SandboxUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI must test the {mode} sandbox, but it cannot run here: {exc}")
        pytest.skip(str(exc))


def leftovers(meta: dict) -> list[int]:
    """Processes still alive from the call described by ``meta`` (empty when contained)."""
    return find_pids(uid=meta.get("uid"), token=meta.get("token"))


@pytest.fixture(scope="session")
def search_cache_path() -> Path:
    """../shared/data/arpo/search_cache.json, or a clean skip."""
    if not SEARCH_CACHE.is_file():
        pytest.skip("../shared/data/arpo/search_cache.json is not present")
    return SEARCH_CACHE


@pytest.fixture(scope="session")
def host_pid() -> int:
    return os.getpid()
