"""Hostile battery under bubblewrap (skipped where bwrap cannot create namespaces)."""

import pytest

from .battery import CASES, run_case
from .conftest import make_tool


@pytest.fixture(scope="module")
def tool():
    t = make_tool("bwrap")
    assert t.mode == "bwrap"
    return t


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_bwrap(tool, case, tmp_path):
    run_case(tool, case, tmp_path)
