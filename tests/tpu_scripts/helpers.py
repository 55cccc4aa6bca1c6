"""Helpers for the tpu_scripts tests: run a script with bash under a given PATH and read back
the `+ command` lines it prints."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tpu_scripts"
FAKE_GCLOUD = Path(__file__).resolve().parent / "fake_gcloud.sh"
BASH = shutil.which("bash") or "/bin/bash"
# TMPDIR the scripts see in dry-run tests (only printed: the tarball paths are under it)
DRY_TMP = "/tmp/arpo-test"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def commands(self) -> list[str]:
        """The printed commands, without the leading '+ '."""
        return [line[2:] for line in self.stdout.splitlines() if line.startswith("+ ")]

    def argv(self, i: int) -> list[str]:
        """Command ``i`` split as a shell would split it."""
        return shlex.split(self.commands[i])

    def remote(self, i: int) -> str:
        """The --command=... value of command ``i`` (what runs on the workers)."""
        (cmd,) = [a[len("--command=") :] for a in self.argv(i) if a.startswith("--command=")]
        return cmd


def run_script(script: str, *args: str, path: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Result:
    full_env = {"PATH": path, "TMPDIR": DRY_TMP, "LC_ALL": "C"}
    full_env.update(env or {})
    p = subprocess.run(
        [BASH, str(SCRIPTS / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(p.returncode, p.stdout, p.stderr)
