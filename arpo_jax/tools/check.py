"""``arpo-jax tools check``: which sandbox runs model code here, with what limits, and does it hold.

``sandbox_report`` builds the Python tool exactly as training would (so it fails the same
way, with the same one-line reason), describes its isolation and limits, and runs a few
containment cases against it: a host file, a host TCP listener, a world-writable host
directory, the per-call process and memory caps, the deadline. ``main_check`` prints the
report and returns 1 when the sandbox is unavailable or any case is not contained.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

from .config import PythonToolConfig
from .python_tool import PythonTool
from .sandbox import SandboxUnavailable


def _network(tool: PythonTool) -> str:
    sb = tool.sandbox
    if sb.mode == "bwrap" or sb.is_root:  # bwrap, or the fallback's unshare as root
        return "none (new network namespace)"
    if sb.landlock >= 4:
        return "TCP blocked by Landlock; UDP and pathname Unix sockets are not (docs/sandbox.md)"
    return "NOT isolated (not root and no Landlock network rules)"


def describe_limits(tool: PythonTool) -> dict:
    """The isolation and limits of ``tool``'s sandbox, as plain values."""
    cfg, sb = tool.config, tool.sandbox
    return {
        "mode": sb.mode,
        "interpreter": sb.exe,
        "uid": "a fresh unprivileged uid per call (no capabilities)" if sb.is_root
        else f"the host's uid {os.geteuid()}",
        "landlock_abi": sb.landlock if sb.mode == "rlimit" else None,
        "memory": sb.memory.describe(),
        "cpu_seconds": cfg.cpu_seconds or f"deadline + 1 ({int(cfg.timeout_s) + 1})",
        "timeout_s": cfg.timeout_s,
        "output": f"{cfg.max_output_chars} characters kept, killed past {cfg.output_kill_bytes} bytes",
        "disk": f"private writable directory of {cfg.tmp_bytes} bytes, files up to {cfg.max_file_bytes} bytes",
        "open_files": cfg.max_open_files,
        "network": _network(tool),
    }


# Two children each touch 60 % of the call's cap and then hold it until both have reported
# (a pipe barrier), so the two allocations overlap however the children are scheduled; "BOTH"
# means 120 % of the cap was resident at once. A child that cannot allocate exits 3.
_MEMORY_CASE = """import os
r_ready, w_ready = os.pipe()
r_go, w_go = os.pipe()
for i in range(2):
    if os.fork() == 0:
        os.close(r_ready)
        os.close(w_go)
        try:
            x = bytearray({mib} << 20)
            x[::4096] = b'y' * len(x[::4096])
            os.write(w_ready, b'1')
        except BaseException:
            os._exit(3)
        os.close(w_ready)
        os.read(r_go, 1)
        os._exit(0)
os.close(w_ready)
held = b''
while True:
    chunk = os.read(r_ready, 2)
    if not chunk:
        break
    held += chunk
os.close(w_go)
for i in range(2):
    os.wait()
print('BO' + 'TH' if len(held) == 2 else 'stopped')
"""


def _containment_cases(tool: PythonTool, secret: str, port: int, hostdir: str) -> list[tuple[str, str, tuple, str]]:
    """(name, code, statuses that count as contained, text whose appearance means it escaped);
    cases run with a 3 s deadline, the memory case with 20 s (touching the pages takes time)."""
    part = (tool.config.memory_bytes * 6 // 10) >> 20  # two of these exceed the call's cap
    return [
        ("runs code", "print(6 * 7)", ("ok",), ""),
        ("host file unreadable", f"print(open({secret!r}).read())", ("error",), "TOPSECRET"),
        ("host network unreachable", f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
         "print('CONN' + 'ECTED')", ("error",), "CONNECTED"),
        ("host directory unwritable", f"open({hostdir + '/ESCAPE'!r}, 'w').write('x')\nprint('WR' + 'OTE')",
         ("error",), "WROTE"),
        ("process cap holds", "import os\nwhile True:\n    os.fork()", ("error", "timeout"), ""),
        ("memory cap is per call", _MEMORY_CASE.format(mib=part), ("ok", "error"), "BOTH"),
        ("deadline kills", "import time\ntime.sleep(60)", ("timeout",), ""),
    ]


QUICK_CASES = 4  # the cases that take well under a second together (run at every training start)


def self_test(tool: PythonTool, quick: bool = False) -> list[dict]:
    """Runs the containment cases (``quick``: the first ``QUICK_CASES``); each row: name, passed,
    status, seconds, and the output's tail."""
    base = tempfile.mkdtemp(prefix="arpo_check_", dir="/tmp")
    os.chmod(base, 0o755)
    secret = os.path.join(base, "secret.txt")
    with open(secret, "w") as f:
        f.write("TOPSECRET")
    os.chmod(secret, 0o644)
    hostdir = os.path.join(base, "shared")
    os.mkdir(hostdir)
    os.chmod(hostdir, 0o777)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    rows = []
    try:
        cases = _containment_cases(tool, secret, listener.getsockname()[1], hostdir)
        for name, code, ok_statuses, marker in cases[:QUICK_CASES] if quick else cases:
            t0 = time.monotonic()
            out = tool.run(code, timeout_s=20.0 if name.startswith("memory") else 3.0)
            escaped = bool(marker and marker in out.content) or os.path.exists(hostdir + "/ESCAPE")
            escaped = escaped or _accepted(listener) or (name == "runs code" and out.content != "42")
            passed = out.status in ok_statuses and not escaped
            rows.append({"case": name, "passed": passed, "status": out.status, "seconds": time.monotonic() - t0,
                         "output": out.content[-160:]})
    finally:
        listener.close()
        shutil.rmtree(base, ignore_errors=True)
    return rows


def _accepted(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
        conn.close()
        return True
    except BlockingIOError:
        return False


def sandbox_report(cfg: PythonToolConfig, run_self_test: bool = True) -> dict:
    """{"ok", "error" | "limits", "self_test"} for the Python tool built from ``cfg``."""
    try:
        tool = PythonTool(cfg)
    except (SandboxUnavailable, FileNotFoundError) as exc:
        return {"ok": False, "error": str(exc)}
    rows = self_test(tool) if run_self_test else []
    return {"ok": all(r["passed"] for r in rows), "limits": describe_limits(tool), "self_test": rows}


def startup_check(tool: PythonTool) -> str:
    """The quick self-test run before training or evaluation starts; returns a line for the log
    (loud for the rlimit fallback), raises ``SandboxUnavailable`` when a case is not contained."""
    for row in self_test(tool, quick=True):
        if not row["passed"]:
            raise SandboxUnavailable(f"python tool: the {tool.mode} sandbox failed its start-up self-test "
                                     f"({row['case']}: {row['status']}, {row['output']!r}); run arpo-jax tools check")
    if tool.mode == "rlimit":
        return (f"WARNING: python tool in the weaker rlimit sandbox (tools.python.sandbox=rlimit): "
                f"{tool.describe()}; see docs/sandbox.md")
    return f"python tool: {tool.describe()}"


def check_dispatcher(dispatcher) -> dict:
    """``startup_check`` for a dispatcher's Python tool (if it has one), printed; returns
    {"mode", "line"} for the run's log, metrics and status.json."""
    tool = dispatcher.tools.get("python")
    if tool is None:
        return {"mode": "none", "line": "python tool: off"}
    line = startup_check(tool)
    print(line, flush=True)
    return {"mode": tool.mode, "line": line}


def format_report(report: dict) -> str:
    """The report as the lines ``arpo-jax tools check`` prints."""
    if "error" in report:
        return f"UNAVAILABLE: {report['error']}"
    lines = [f"python tool sandbox: {report['limits']['mode']}"]
    lines += [f"  {k}: {v}" for k, v in report["limits"].items() if k != "mode" and v is not None]
    if report["self_test"]:
        lines.append("self-test:")
    for r in report["self_test"]:
        mark = "ok  " if r["passed"] else "FAIL"
        lines.append(f"  {mark} {r['case']} ({r['status']}, {r['seconds']:.2f} s)")
        if not r["passed"]:
            lines.append(f"       output: {r['output']!r}")
    lines.append("result: " + ("contained" if report["ok"] else "NOT CONTAINED: do not train with this sandbox"))
    return "\n".join(lines)
