"""Hostile battery under the rlimit fallback (chosen explicitly; Landlock, per-call uid, limits).

Cases the fallback is documented not to stop (``Case.rlimit_gap``) must really escape here,
so that docs/sandbox.md says exactly what this mode does and does not contain.
"""

from pathlib import Path

import pytest

from .battery import CASES, run_case
from .conftest import make_tool

DOC = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"


@pytest.fixture(scope="module")
def tool():
    with pytest.warns(RuntimeWarning, match="rlimit"):
        t = make_tool("rlimit")
    assert t.mode == "rlimit"
    return t


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_rlimit(tool, case, tmp_path):
    run_case(tool, case, tmp_path, gap=case.rlimit_gap)


def test_documented_gaps_are_the_batterys():
    """docs/sandbox.md names every case the fallback does not stop, and no other."""
    text = DOC.read_text()
    section = text.split("## What the rlimit fallback does not stop", 1)[1].split("\n## ", 1)[0]
    named = {c.name for c in CASES if f"`{c.name}`" in section}
    assert named == {c.name for c in CASES if c.rlimit_gap}
