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


def test_root_gets_a_kernel_capped_tmpfs(tool):
    """As root the call's directory is a tmpfs of ``tmp_bytes`` in its own mount namespace: a
    write past the cap fails in the kernel (ENOSPC), whatever the watchdog's timing."""
    if not tool.sandbox.is_root:
        pytest.skip("the tmpfs cap needs root (without it the watchdog is the cap)")
    out = tool.run("import os\nst = os.statvfs('.')\nprint(st.f_blocks * st.f_frsize)\nfs = []\ntry:\n"
                   "    for i in range(256):\n        f = open('f%d' % i, 'wb')\n        os.unlink('f%d' % i)\n"
                   "        fs.append(f)\n        f.write(b'x' * (1 << 20)); f.flush()\n"
                   "except OSError as e:\n    print('errno', e.errno, 'after', len(fs))\n")
    lines = out.content.split()
    assert int(lines[0]) == tool.sandbox.cfg.tmp_bytes, out.content
    assert "errno 28" in out.content, out.content  # ENOSPC, within the cap (1 MiB files, unlinked)
    assert int(lines[-1]) <= (tool.sandbox.cfg.tmp_bytes >> 20) + 1, out.content  # + the file whose write failed
