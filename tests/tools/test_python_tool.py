"""Python tool behaviour (not hostile): output, errors, limits, configuration, fallback."""

from __future__ import annotations

import warnings

import pytest

import arpo_jax.tools.sandbox as sandbox_mod
from arpo_jax.tools import PythonTool, PythonToolConfig, clean_code, truncate
from arpo_jax.tools.sandbox import choose_mode

from .conftest import leftovers


@pytest.fixture(scope="module")
def tool():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warns where bwrap is missing
        return PythonTool(PythonToolConfig(timeout_s=5.0, max_output_chars=300))


def test_prints_and_trailing_expression(tool):
    assert tool.run("print('hi')").content == "hi"
    assert tool.run("x = 6\nx * 7").content == "42"
    assert tool.run("print(1)\nNone").content == "1"
    out = tool.run("import math\nmath.factorial(5)")
    assert (out.status, out.content) == ("ok", "120")


def test_markdown_fences_and_indentation(tool):
    assert tool.run("\n```python\nprint(3)\n```\n").content == "3"
    assert tool.run("\n    a = 2\n    print(a)\n").content == "2"
    assert clean_code("```py\nx=1\n```") == "x=1"


def test_no_output_is_explained_not_retried(tool):
    out = tool.run("x = 1")
    assert out.status == "no_output"
    assert "print()" in out.content


def test_errors_show_a_traceback_like_python_c(tool):
    out = tool.run("def f():\n    return 1 / 0\nf()")
    assert out.status == "error"
    assert out.content.startswith("Traceback (most recent call last):")
    assert 'File "<string>", line 2, in f' in out.content
    assert out.content.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "_runner" not in out.content and "in main" not in out.content
    syntax = tool.run("def f(:\n  pass")
    assert syntax.status == "error" and "SyntaxError" in syntax.content


def test_output_is_truncated_with_a_marker(tool):
    out = tool.run("for i in range(2000):\n    print(i)")
    assert out.status == "ok"
    assert len(out.content) < 400
    assert "truncated" in out.content
    assert out.content.startswith("0\n1\n") and out.content.endswith("1999")


def test_stdout_and_stderr_are_both_kept(tool):
    out = tool.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert out.content == "out\nerr"


def test_packages_of_the_interpreter_are_available(tool):
    out = tool.run("import numpy as np, sympy\nprint(int(np.arange(5).sum()), sympy.factorint(12))")
    assert out.content == "10 {2: 2, 3: 1}"


def test_exit_codes(tool):
    assert tool.run("raise SystemExit(0)").status == "no_output"
    out = tool.run("import sys\nsys.exit(3)")
    assert out.status == "error" and "status 3" in out.content


def test_each_call_is_a_fresh_process(tool):
    tool.run("open('/tmp/state', 'w').write('x')\nimport builtins\nbuiltins.LEAKED = 1")
    out = tool.run("import os, builtins\nprint(os.path.exists('/tmp/state'), hasattr(builtins, 'LEAKED'))")
    if tool.mode == "bwrap":
        assert out.content == "False False"
    else:
        assert out.content.endswith("False")


def test_per_call_timeout(tool):
    out = tool.run("import time\ntime.sleep(30)", timeout_s=0.5)
    assert out.status == "timeout" and "0.5 seconds" in out.content
    assert leftovers(out.meta) == []


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="sandbox must be"):
        PythonToolConfig(sandbox="docker")
    with pytest.raises(FileNotFoundError, match="not found"):
        PythonTool(PythonToolConfig(python_executable="/nonexistent/python3"))


def test_truncate_helper():
    assert truncate("abc", 10) == "abc"
    t = truncate("x" * 100 + "END", 30)
    assert t.endswith("END") and "73 characters omitted" in t


def test_fallback_is_loud_when_bwrap_is_missing(monkeypatch):
    sandbox_mod._probe_bwrap.cache_clear()
    sandbox_mod._warned.clear()
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    try:
        with pytest.warns(RuntimeWarning, match="FALLING BACK"):
            assert choose_mode(PythonToolConfig()) == "rlimit"
        with pytest.raises(RuntimeError, match="bwrap is not installed"):
            choose_mode(PythonToolConfig(sandbox="bwrap"))
    finally:
        sandbox_mod._probe_bwrap.cache_clear()


_HOST = """
import sys, types, warnings
warnings.simplefilter("ignore")
import arpo_jax.tools.sandbox as S
from arpo_jax.tools import PythonTool, PythonToolConfig
S.uuid = types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=sys.argv[2]))
tool = PythonTool(PythonToolConfig(sandbox=sys.argv[1], timeout_s=600))
print("started", flush=True)
tool.run(sys.argv[3])
"""


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("mode", ["bwrap", "rlimit"])
def test_sandbox_dies_with_its_host(mode):
    """A sandbox whose host process is SIGKILLed mid-call does not outlive it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from arpo_jax.tools.procs import find_pids

    from .conftest import REPO, make_tool

    make_tool(mode)  # skips when bwrap cannot run here
    token = uuid.uuid4().hex
    code, expected = "import time\ntime.sleep(600)", 1
    if os.geteuid() == 0:  # per-call uid: detached children are covered too
        code, expected = "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(600)", 2
    expected += mode == "bwrap"  # bwrap's own process
    host = subprocess.Popen([sys.executable, "-c", _HOST, mode, token, code], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        assert host.stdout.readline().strip() == b"started"
        deadline = time.monotonic() + 20
        while len(find_pids(token=token)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(find_pids(token=token)) >= expected, "the sandbox never started"
    finally:
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
    deadline = time.monotonic() + 5
    while find_pids(token=token) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = find_pids(token=token)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
