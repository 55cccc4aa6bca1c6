"""Python tool behaviour (not hostile): output, errors, limits, configuration, failing closed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import arpo_jax.tools.sandbox as sandbox_mod
from arpo_jax.tools import PythonTool, PythonToolConfig, SandboxUnavailable, clean_code, truncate
from arpo_jax.tools import cgroups
from arpo_jax.tools.sandbox import choose_mode

from .conftest import leftovers, make_tool, rlimit_python


@pytest.fixture(scope="module")
def tool():
    return make_tool("bwrap", timeout_s=5.0, max_output_chars=300, memory_bytes=2 << 30)


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
    assert out.content == "False False"


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


def test_fails_closed_when_bwrap_is_missing(monkeypatch):
    """No silent fallback: a missing bubblewrap is a one-line error naming the fix."""
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed.*apt-get install bubblewrap") as e:
        choose_mode(PythonToolConfig())
    assert "\n" not in str(e.value) and "tools.python.sandbox=rlimit" in str(e.value)
    with pytest.raises(ValueError, match="tools.python.sandbox must be bwrap or rlimit"):
        PythonToolConfig(sandbox="auto")


def test_fails_closed_when_bwrap_cannot_run(monkeypatch, tmp_path):
    """A bubblewrap that is installed but broken is caught by the start-up self-test."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxUnavailable, match="bwrap sandbox does not work here.*new namespace"):
        PythonTool(PythonToolConfig())


def test_rlimit_refuses_an_interpreter_the_sandbox_uid_cannot_read(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the per-call uid exists only when the host is root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    exe = private / "python3"
    exe.symlink_to(sys.executable)
    with pytest.raises(SandboxUnavailable, match="not readable by the unprivileged sandbox uid"):
        PythonTool(PythonToolConfig(sandbox="rlimit", python_executable=str(exe)))


def test_bwrap_runs_an_interpreter_under_tmp():
    """The private /tmp is mounted before the interpreter is bound (it used to hide it)."""
    root = tempfile.mkdtemp(prefix="arpo_venv_", dir="/tmp")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", f"{root}/.venv"], check=True)
        t = make_tool("bwrap", python_executable=f"{root}/.venv/bin/python")
        out = t.run("import os, sys\nprint(sys.executable, os.access('/tmp', os.W_OK))")
        assert (out.status, out.content) == ("ok", f"{root}/.venv/bin/python True"), out.content
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("mode,cap", [("bwrap", "auto"), ("rlimit", "auto"), ("bwrap", "processes")])
def test_memory_cap_is_per_call(mode, cap):
    """8 children allocating 1 GiB each are stopped at the call's 2 GiB cap, whatever the cap's kind."""
    t = make_tool(mode, memory_bytes=2 << 30, memory_cap=cap, timeout_s=20.0)
    code = ("import os, time\nkids = []\nfor i in range(8):\n    try:\n        pid = os.fork()\n    except OSError:\n"
            "        break\n    if pid == 0:\n        try:\n            x = bytearray(1 << 30)\n"
            "            x[::4096] = b'y' * len(x[::4096])\n            time.sleep(2)\n            os._exit(0)\n"
            "        except BaseException:\n            os._exit(3)\n    kids.append(pid)\n"
            "ok = [os.waitpid(p, 0)[1] == 0 for p in kids]\nprint(sum(ok), 'of 8 children allocated 1 GiB')")
    out = t.run(code)
    assert "8 of 8" not in out.content, out.content
    plan = t.sandbox.memory
    assert plan.max_processes * plan.process_bytes <= 2 << 30 or plan.kind.startswith("cgroup")
    if plan.kind.startswith("cgroup"):
        assert out.meta["memory_peak"] <= 2 << 30
        assert "memory" in out.content and out.status == "error", out.content
    assert leftovers(out.meta) == []


def test_memory_plan_arithmetic():
    plan = cgroups.plan_memory(2 << 30, 32, 4, "processes")
    assert (plan.kind, plan.max_processes, plan.process_bytes) == ("processes", 4, 512 << 20)
    assert "4 processes" in plan.describe()


_HOST = """
import sys, types, warnings
warnings.simplefilter("ignore")
import arpo_jax.tools.sandbox as S
from arpo_jax.tools import PythonTool, PythonToolConfig
S.uuid = types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=sys.argv[2]))
tool = PythonTool(PythonToolConfig(sandbox=sys.argv[1], timeout_s=600, python_executable=sys.argv[4]))
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
    exe = rlimit_python() if mode == "rlimit" else sys.executable
    host = subprocess.Popen([sys.executable, "-c", _HOST, mode, token, code, exe], stdout=subprocess.PIPE,
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
