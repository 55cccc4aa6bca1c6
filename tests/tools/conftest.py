"""Shared helpers of the tool tests: sandbox factories and process-leak checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arpo_jax.tools import PythonTool, PythonToolConfig
from arpo_jax.tools.procs import find_pids

REPO = Path(__file__).resolve().parents[2]
SEARCH_CACHE = REPO.parent / "shared" / "data" / "arpo" / "search_cache.json"

# Small limits keep the hostile battery fast; every case must end within TIMEOUT_S + SLACK_S.
TIMEOUT_S = 2.0
SLACK_S = 3.0


def hostile_config(mode: str) -> PythonToolConfig:
    """Tight limits for the hostile battery."""
    return PythonToolConfig(sandbox=mode, timeout_s=TIMEOUT_S, memory_bytes=1 << 30, tmp_bytes=16 << 20,
                            max_file_bytes=8 << 20, output_kill_bytes=4 << 20, max_output_chars=2000,
                            max_processes=32)


def make_tool(mode: str) -> PythonTool:
    """A PythonTool in ``mode``; skips when bubblewrap cannot run here."""
    try:
        return PythonTool(hostile_config(mode))
    except RuntimeError as exc:
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
