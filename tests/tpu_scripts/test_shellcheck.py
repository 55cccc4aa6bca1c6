"""Every script in tpu_scripts/ (and the fake gcloud of these tests) is shellcheck-clean."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.tpu_scripts.helpers import FAKE_GCLOUD, SCRIPTS


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (scripts/setup.sh installs it: apt-get install shellcheck)",
)
def test_scripts_are_shellcheck_clean():
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert len(scripts) >= 9
    p = subprocess.run(
        ["shellcheck", "--external-sources", *map(str, scripts), str(FAKE_GCLOUD)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
