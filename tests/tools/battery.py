"""The hostile-input battery, shared by the bubblewrap and the rlimit-fallback test files.

Every case must: end within its limit, come back as an error observation, leave no process
behind, and leave the tool working for the next call.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass

from .conftest import REPO, SLACK_S, TIMEOUT_S, leftovers


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    statuses: tuple[str, ...] = ("error",)
    forbid: tuple[str, ...] = ()  # must not appear in the observation
    expect: tuple[str, ...] = ()  # one of these must appear in the observation


VENV = os.path.dirname(os.path.dirname(sys.executable))

CASES = [
    Case("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
         statuses=("timeout", "error")),
    Case("allocate_10gb", "x = bytearray(10 * 1024**3)\nprint(len(x))", expect=("MemoryError",)),
    Case("allocate_10gb_numpy", "import numpy as np\nx = np.ones(10 * 1024**3 // 8)\nprint(x.sum())",
         expect=("MemoryError", "Unable to allocate")),
    Case("infinite_loop", "while True:\n    pass", statuses=("timeout",)),
    Case("sleep_past_deadline", "import time\ntime.sleep(600)\nprint('woke' + ' up')", statuses=("timeout",),
         forbid=("woke up",)),
    Case("print_100mb", "import sys\nsys.stdout.write('x' * 100_000_000)", expect=("killed",)),
    Case("fill_tmp", "import os, tempfile\nd = tempfile.gettempdir()\ni = 0\nwhile True:\n"
         "    with open(os.path.join(d, 'f' + str(i)), 'wb') as f:\n        f.write(b'x' * (1 << 20))\n    i += 1",
         statuses=("error", "timeout")),
    Case("network_local", "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
         "s.sendall(b'ESCAPED')\nprint('CO' + 'NNECTED')", forbid=("CONNECTED",)),
    Case("network_external", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n"
         "print('CO' + 'NNECTED')", forbid=("CONNECTED",)),
    Case("network_dns", "import socket\nprint('RE' + 'SOLVED', socket.getaddrinfo('example.com', 80))",
         forbid=("RESOLVED",)),
    Case("read_repository", "print('LE' + 'AK', open('{repo}/pyproject.toml').read()[:80])", forbid=("LEAK",)),
    Case("read_root_home", "import os\nprint('LE' + 'AK', open('/root/.bashrc').read()[:80])", forbid=("LEAK",)),
    Case("read_etc_shadow", "print('LE' + 'AK', open('/etc/shadow').read()[:80])", forbid=("LEAK", "root:")),
    Case("read_host_secret", "print('LE' + 'AK', open('{secret}').read())", forbid=("LEAK", "TOPSECRET")),
    Case("read_via_subprocess", "import subprocess\nr = subprocess.run(['cat', '/etc/shadow', '{secret}'], "
         "capture_output=True, text=True)\nassert r.returncode == 0, r.stderr[-200:]\nprint('LE' + 'AK', r.stdout)",
         forbid=("LEAK", "TOPSECRET", "root:")),
    Case("write_repository", "open('{repo}/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("write_system", "open('/usr/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("write_venv", "open('{venv}/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("write_root_dir", "open('/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("write_host_tmp", "open('{hostdir}/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("setsid_double_fork", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         "        fd = os.open('/dev/null', os.O_RDWR)\n        for i in range(3):\n            os.dup2(fd, i)\n"
         "        time.sleep(600)\n    os._exit(0)\ntime.sleep(600)", statuses=("timeout",)),
    Case("setsid_double_fork_detached", "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
         "    if os.fork() == 0:\n        fd = os.open('/dev/null', os.O_RDWR)\n        for i in range(3):\n"
         "            os.dup2(fd, i)\n        time.sleep(600)\n    os._exit(0)\nprint('parent done')",
         statuses=("ok",)),
    Case("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", expect=("RecursionError",)),
    Case("deep_recursion_unlimited", "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)",
         statuses=("error", "timeout")),
    Case("kill_parent", "import os, signal\nos.kill({host_pid}, signal.SIGKILL)\nprint('se' + 'nt')", forbid=("sent",)),
    Case("kill_everything", "import os, signal\nos.kill(-1, signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)",
         statuses=("error", "ok", "no_output")),
]


def run_case(tool, case: Case, tmp_path) -> None:
    """Runs one case and checks containment, the error observation and cleanup."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    hostdir = tmp_path / "host"
    hostdir.mkdir(mode=0o777)
    os.chmod(hostdir, 0o777)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    code = case.code.format(port=listener.getsockname()[1], repo=REPO, secret=secret, host_pid=os.getpid(),
                            venv=VENV, hostdir=hostdir)
    escape_paths = [REPO / "SANDBOX_ESCAPE", "/usr/SANDBOX_ESCAPE", os.path.join(VENV, "SANDBOX_ESCAPE"),
                    "/SANDBOX_ESCAPE", hostdir / "SANDBOX_ESCAPE"]
    try:
        t0 = time.monotonic()
        out = tool.run(code)
        elapsed = time.monotonic() - t0
        assert elapsed < TIMEOUT_S + SLACK_S, f"{case.name}: took {elapsed:.1f}s"
        assert out.status in case.statuses, f"{case.name}: status {out.status}: {out.content[-500:]}"
        assert len(out.content) < tool.config.max_output_chars + 1000
        for s in case.forbid:
            assert s not in out.content, f"{case.name}: {s!r} in {out.content[-500:]}"
        if case.expect:
            assert any(s in out.content for s in case.expect), f"{case.name}: {out.content[-500:]}"
        try:
            conn, _ = listener.accept()
            conn.close()
            raise AssertionError(f"{case.name}: the sandbox reached a host socket")
        except BlockingIOError:
            pass
        for p in escape_paths:
            assert not os.path.exists(p), f"{case.name}: wrote {p}"
        assert leftovers(out.meta) == [], f"{case.name}: processes left behind"
        after = tool.run("print(6 * 7)")
        assert (after.status, after.content) == ("ok", "42"), f"after {case.name}: {after.content}"
    finally:
        listener.close()
        for p in escape_paths:
            if os.path.exists(p):
                os.remove(p)
