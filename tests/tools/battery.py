"""The hostile-input battery, shared by the bubblewrap and the rlimit-fallback test files.

Every case must: end within its limit, come back as an error observation, leave no process
behind, and leave the tool working for the next call.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .conftest import REPO, SLACK_S, TIMEOUT_S, leftovers


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    statuses: tuple[str, ...] = ("error",)
    forbid: tuple[str, ...] = ()  # must not appear in the observation
    expect: tuple[str, ...] = ()  # one of these must appear in the observation
    rlimit_gap: str = ""  # why the rlimit fallback does not stop this (documented in docs/sandbox.md)


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
    Case("print_100mb", "import sys\nsys.stdout.write('x' * 100_000_000)", expect=("killed",),
         statuses=("error", "timeout")),  # killed for its output, or (on a loaded machine) at the deadline
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
    # Escapes that bypass anything implemented in Python (the old fallback's audit hook).
    Case("posix_spawn_below_subprocess", "import os\nr, w = os.pipe()\n"
         "pid = os.posix_spawn('/bin/cat', ['cat', '/etc/shadow', '{secret}'], {{}},\n"
         "                     file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])\n"
         "os.close(w)\nos.waitpid(pid, 0)\nprint('LE' + 'AK', os.read(r, 4096))", forbid=("TOPSECRET", "root:"),
         statuses=("error", "ok")),
    Case("ctypes_system", "import ctypes\nctypes.CDLL(None).system(b'cat {secret} /etc/shadow > out.txt')\n"
         "print('LE' + 'AK', open('out.txt').read())", forbid=("TOPSECRET", "root:"), statuses=("error", "ok")),
    Case("exec_cat", "import os\nos.execv('/bin/cat', ['cat', '{secret}'])", forbid=("TOPSECRET",),
         statuses=("error", "ok")),
    Case("dir_fd_open", "import os\nd = os.open('{secretdir}', os.O_RDONLY)\n"
         "print('LE' + 'AK', os.read(os.open('secret.txt', os.O_RDONLY, dir_fd=d), 100))", forbid=("TOPSECRET",)),
    Case("dir_fd_open_root", "import os\nd = os.open('/', os.O_RDONLY)\n"
         "print('LE' + 'AK', os.read(os.open('{secret_rel}', os.O_RDONLY, dir_fd=d), 100))", forbid=("TOPSECRET",)),
    Case("list_by_fd", "import os\nd = os.open('{secretdir}', os.O_RDONLY)\nprint('LE' + 'AK', os.listdir(d))",
         forbid=("secret.txt",)),
    Case("symlink_race", "import os, threading\nstop = []\ndef flip():\n    while not stop:\n"
         "        for t in ('/usr/lib/os-release', '{secret}'):\n            try:\n                os.remove('l')\n"
         "            except OSError:\n                pass\n            os.symlink(t, 'l')\n"
         "threading.Thread(target=flip, daemon=True).start()\nseen = set()\nfor i in range(3000):\n"
         "    try:\n        seen.add(open('l').read(20))\n    except OSError:\n        pass\nstop.append(1)\n"
         "print('LE' + 'AK' if any('TOPSECRET' in x for x in seen) else 'held')", forbid=("LEAK", "TOPSECRET"),
         statuses=("ok",)),
    Case("host_proc_cmdline", "import os\nprint('LE' + 'AK', open('/proc/{host_pid}/cmdline', 'rb').read())",
         forbid=("LEAK",)),
    Case("host_proc_listing", "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
         "            print(open('/proc/%s/cmdline' % p, 'rb').read().replace(bytes(1), b' ').decode())\n"
         "        except OSError:\n            pass", forbid=("{host_cmdline}",),
         statuses=("ok", "error", "no_output")),
    Case("write_dev_shm", "open('/dev/shm/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("write_var_tmp", "open('/var/tmp/SANDBOX_ESCAPE', 'w').write('x')\nprint('WR' + 'OTE')", forbid=("WROTE",)),
    Case("unix_socket_path", rlimit_gap="Landlock does not govern connect() to pathname Unix sockets",
         code="import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{sockpath}')\n"
         "s.sendall(b'ESCAPED')\nprint('CO' + 'NNECTED')", forbid=("CONNECTED",), statuses=("error", "ok")),
    Case("unix_socket_abstract", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0{abstract}')\n"
         "s.sendall(b'ESCAPED')\nprint('CO' + 'NNECTED')", forbid=("CONNECTED",)),
    Case("unlinked_disk_fill", "import os\nfs = []\nfor i in range(64):\n    f = open('big%d' % i, 'wb')\n"
         "    os.unlink('big%d' % i)\n    fs.append(f)\n    for j in range(8):\n        f.write(b'x' * (1 << 20))\n"
         "        f.flush()\nprint('FI' + 'LLED')", forbid=("FILLED",), statuses=("error", "timeout")),
    Case("forked_memory_bomb", "import os, time\nkids = []\nfor i in range(8):\n    pid = os.fork()\n"
         "    if pid == 0:\n        try:\n            x = bytearray(1 << 30)\n"
         "            x[::4096] = b'y' * len(x[::4096])\n"
         "            time.sleep(1)\n            os._exit(0)\n        except BaseException:\n            os._exit(3)\n"
         "    kids.append(pid)\ncodes = [os.waitpid(p, 0)[1] for p in kids]\n"
         "print('ALL' + 'ALLOCATED' if all(c == 0 for c in codes) else 'stopped')",
         forbid=("ALLALLOCATED",), statuses=("error", "ok")),
]


def run_case(tool, case: Case, tmp_path, gap: str = "") -> None:
    """Runs one case and checks containment, the error observation and cleanup.

    The host's secret, directory and sockets live in a world-traversable directory under /tmp
    with world-readable (or -writable) modes, so only the sandbox itself keeps them out of reach.
    """
    base = Path(tempfile.mkdtemp(prefix="arpo_battery_", dir="/tmp"))
    base.chmod(0o755)
    try:
        _run_case(tool, case, base, gap)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_case(tool, case: Case, tmp_path: Path, gap: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    secret.chmod(0o644)
    hostdir = tmp_path / "host"
    hostdir.mkdir(mode=0o777)
    os.chmod(hostdir, 0o777)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    sockpath = str(hostdir / "s.sock")
    abstract = f"arpo-test-{os.getpid()}-{time.monotonic_ns()}"
    unix = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)]
    unix[0].bind(sockpath)
    os.chmod(sockpath, 0o777)
    unix[1].bind("\0" + abstract)
    for u in unix:
        u.listen(4)
        u.setblocking(False)
    with open("/proc/self/cmdline", "rb") as f:
        host_cmdline = f.read().replace(bytes(1), b" ").decode().strip()
    code = case.code.format(port=listener.getsockname()[1], repo=REPO, secret=secret, host_pid=os.getpid(),
                            venv=VENV, hostdir=hostdir, secretdir=tmp_path, secret_rel=str(secret).lstrip("/"),
                            sockpath=sockpath, abstract=abstract)
    escape_paths = [REPO / "SANDBOX_ESCAPE", "/usr/SANDBOX_ESCAPE", os.path.join(VENV, "SANDBOX_ESCAPE"),
                    "/SANDBOX_ESCAPE", hostdir / "SANDBOX_ESCAPE", "/dev/shm/SANDBOX_ESCAPE", "/var/tmp/SANDBOX_ESCAPE"]
    try:
        t0 = time.monotonic()
        out = tool.run(code)
        elapsed = time.monotonic() - t0
        assert elapsed < TIMEOUT_S + SLACK_S, f"{case.name}: took {elapsed:.1f}s"
        assert out.status in case.statuses, f"{case.name}: status {out.status}: {out.content[-500:]}"
        assert len(out.content) < tool.config.max_output_chars + 1000
        escapes = [f"printed {s!r}" for s in (f.format(host_cmdline=host_cmdline) for f in case.forbid)
                   if s in out.content]
        for sock in (listener, *unix):
            try:
                conn, _ = sock.accept()
                conn.close()
                escapes.append(f"reached the host socket {sock.getsockname()!r}")
            except BlockingIOError:
                pass
        escapes += [f"wrote {p}" for p in escape_paths if os.path.exists(p)]
        if gap:  # a documented limit of this mode: the battery shows that it is real
            assert escapes, f"{case.name}: documented as not stopped ({gap}) but it was contained"
        else:
            assert not escapes, f"{case.name}: {escapes}: {out.content[-500:]}"
            if case.expect:
                assert any(s in out.content for s in case.expect), f"{case.name}: {out.content[-500:]}"
        assert leftovers(out.meta) == [], f"{case.name}: processes left behind"
        after = tool.run("print(6 * 7)")
        assert (after.status, after.content) == ("ok", "42"), f"after {case.name}: {after.content}"
    finally:
        listener.close()
        for u in unix:
            u.close()
        for p in escape_paths:
            if os.path.exists(p):
                os.remove(p)
