"""The installed versions are the locked ones: constraints.txt pins every direct dependency,
and this environment (made by scripts/setup.sh, as CI's is) has exactly those versions."""

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _direct_dependencies() -> list[Requirement]:
    reqs = [Requirement(r) for r in md.requires("arpo_jax") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": "test"})]


def test_every_direct_dependency_is_locked_within_its_range():
    pins = _lock()
    for req in _direct_dependencies():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not in constraints.txt (run make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"


def test_installed_versions_are_the_locked_ones():
    pins = _lock()
    wrong = []
    for req in _direct_dependencies():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        installed = Version(md.version(req.name))
        if Version(installed.public) != Version(pins[name]):  # torch's local label (+cpu) aside
            wrong.append(f"{req.name}: installed {installed}, locked {pins[name]}")
    assert not wrong, "; ".join(wrong) + " (re-run scripts/setup.sh, or make lock)"
