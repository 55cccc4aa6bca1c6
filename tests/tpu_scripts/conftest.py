"""Fixtures of the tpu_scripts tests: a PATH without gcloud (dry runs), or with the fake gcloud."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.tpu_scripts.helpers import FAKE_GCLOUD, Result, run_script


@pytest.fixture
def no_gcloud_path(tmp_path: Path) -> str:
    """A PATH with nothing on it (in particular no gcloud): dry runs need no programs."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    assert shutil.which("gcloud", path=str(empty)) is None
    return str(empty)


@pytest.fixture
def dry(no_gcloud_path):
    """dry("create.sh", args...) -> Result of the script run with --dry-run and no gcloud."""

    def _run(script: str, *args: str, env: dict[str, str] | None = None) -> Result:
        return run_script(script, *args, "--dry-run", path=no_gcloud_path, env=env)

    return _run


@pytest.fixture
def fake_gcloud(tmp_path: Path):
    """A PATH whose gcloud is tests/tpu_scripts/fake_gcloud.sh, plus its environment."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").symlink_to(FAKE_GCLOUD)
    log = tmp_path / "gcloud.log"
    log.touch()
    env = {
        "FAKE_GCLOUD_LOG": str(log),
        "FAKE_TPU_ROOT": str(tmp_path / "tpu"),
        "FAKE_TPU_WORKERS": "2",
        "TMPDIR": str(tmp_path),
        "ARPO_POLL_SECONDS": "0",
    }
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"

    def calls() -> list[list[str]]:
        return [line.split("\x1f") for line in log.read_text().splitlines()]

    return path, env, calls
