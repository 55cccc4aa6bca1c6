"""Hostile battery under the rlimit fallback (always available)."""

import pytest

from .battery import CASES, run_case
from .conftest import make_tool


@pytest.fixture(scope="module")
def tool():
    with pytest.warns(RuntimeWarning, match="rlimit"):
        t = make_tool("rlimit")
    assert t.mode == "rlimit"
    return t


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_rlimit(tool, case, tmp_path):
    run_case(tool, case, tmp_path)
