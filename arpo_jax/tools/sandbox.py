"""Process sandbox for model-written Python: bubblewrap, or a loudly reported rlimit fallback.

Each call is a fresh interpreter process. With bubblewrap (``bwrap``) it gets new PID, IPC,
UTS, network and cgroup namespaces, a read-only view of the system and of the interpreter's
own prefixes only (not the repository, not /root, not /etc/shadow) and a private size-capped
/tmp; the interpreter is the namespace's pid 1, so when it ends the kernel kills everything
it started. Without bwrap, the fallback runs the interpreter directly with resource limits,
a private temporary directory and a Python audit hook: weaker, so it is announced with a
warning. In both modes a process started as root switches to a per-call unprivileged uid
before running model code, so that the process-count limit binds (root ignores
RLIMIT_NPROC); a wall-clock deadline kills the whole process tree, and the sandbox kills
itself when its host dies (its stdin, kept open by the host, reaches EOF).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from .config import PythonToolConfig
from .procs import UidPool, count_user_processes, find_pids, has_token, kill_pids, pump

log = logging.getLogger("arpo_jax.tools")
RUNNER_SOURCE = (Path(__file__).parent / "_runner.py").read_text()
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "mime.types")
_warned: set[str] = set()
_lock = threading.Lock()


@dataclass
class SandboxResult:
    """Raw outcome of one sandboxed run (bytes already decoded)."""

    stdout: str
    stderr: str
    returncode: int | None
    killed: str | None  # "timeout", "output", "tmp" or None
    stdout_bytes: int
    stderr_bytes: int
    wall_s: float
    mode: str
    token: str
    uid: int | None


def interpreter(cfg: PythonToolConfig) -> str:
    """Absolute path of the interpreter that runs model code."""
    exe = cfg.python_executable or sys.executable
    found = shutil.which(exe) if os.sep not in exe else exe
    if not found or not os.path.exists(found):
        raise FileNotFoundError(f"python_executable {exe!r} not found")
    return os.path.abspath(found)


@functools.lru_cache(maxsize=16)
def _interpreter_info(exe: str) -> dict:
    probe = ("import sys, json, site; print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix,"
             " sys.base_exec_prefix], 'site': site.getsitepackages()}))")
    out = subprocess.run([exe, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def interpreter_prefixes(exe: str) -> tuple[str, ...]:
    """Directories the interpreter needs (its prefixes), asked of the interpreter itself."""
    dirs = {os.path.dirname(os.path.dirname(exe))}
    for p in _interpreter_info(exe)["prefixes"]:
        dirs.update({p, os.path.realpath(p)})
    dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(exe))))
    return tuple(sorted(d for d in dirs if d and d != "/" and os.path.isdir(d)))


def site_dirs(exe: str) -> list[str]:
    """The interpreter's site-packages directories (added by the runner under ``-S``)."""
    return [d for d in _interpreter_info(exe)["site"] if os.path.isdir(d)]


def _covered(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def bwrap_args(cfg: PythonToolConfig, exe: str) -> list[str]:
    """The bubblewrap command line up to (not including) the interpreter."""
    args = [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--as-pid-1",
            "--hostname", "sandbox"]
    if os.geteuid() == 0:  # privileged bwrap: keep only what the runner needs to drop to its uid
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = "/" + name
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC_FILES:
        if os.path.exists("/etc/" + name):
            args += ["--ro-bind", "/etc/" + name, "/etc/" + name]
    bound = ["/usr", "/etc"]
    made: list[str] = []
    for d in sorted(set(interpreter_prefixes(exe)) | {os.path.abspath(p) for p in cfg.extra_ro_binds}):
        if _covered(d, bound) or not os.path.exists(d):
            continue
        parts = Path(d).parts
        for i in range(2, len(parts)):
            anc = str(Path(*parts[:i]))
            if anc not in made and not _covered(anc, bound):
                args += ["--perms", "0755", "--dir", anc]
                made.append(anc)
        args += ["--ro-bind", d, d]
        bound.append(d)
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(cfg.tmp_bytes),
             "--tmpfs", "/tmp", "--chdir", "/tmp"]
    return args


@functools.lru_cache(maxsize=16)
def _probe_bwrap(args: tuple[str, ...], exe: str) -> str | None:
    """None when bwrap runs the interpreter here, else why not."""
    if not shutil.which("bwrap"):
        return "bwrap is not installed (apt-get install bubblewrap)"
    code = "import os; print('ok', os.getuid())"
    settings = repr({"cpu_seconds": 30, "memory_bytes": 2 << 30, "max_file_bytes": 1 << 20,
                     "max_open_files": 64, "max_processes": 64, "uid": 65534 if os.geteuid() == 0 else None})
    try:
        out = subprocess.run([*args, exe, "-I", "-c", RUNNER_SOURCE, settings], input=_frame(code),
                             capture_output=True, timeout=60, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap failed to start: {exc}"
    if out.returncode != 0 or not out.stdout.startswith(b"ok"):
        return f"bwrap does not work here: {out.stderr.decode(errors='replace').strip()[:300]}"
    return None


def _loud(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def choose_mode(cfg: PythonToolConfig) -> str:
    """Resolves ``cfg.sandbox`` to "bwrap" or "rlimit"; the fallback is reported loudly."""
    exe = interpreter(cfg)
    if cfg.sandbox == "rlimit":
        _loud("rlimit-forced", "python tool: sandbox='rlimit' (no namespaces): weaker isolation than bubblewrap")
        return "rlimit"
    why = _probe_bwrap(tuple(bwrap_args(cfg, exe)), exe)
    if why is None:
        return "bwrap"
    if cfg.sandbox == "bwrap":
        raise RuntimeError(f"python tool: sandbox='bwrap' requested but {why}")
    _loud("rlimit-auto", f"python tool: FALLING BACK to the rlimit sandbox (weaker isolation): {why}")
    return "rlimit"


class Sandbox:
    """Runs code strings in fresh sandboxed interpreters; thread-safe."""

    def __init__(self, cfg: PythonToolConfig, mode: str | None = None):
        self.cfg = cfg
        self.exe = interpreter(cfg)
        self.mode = mode or choose_mode(cfg)
        self.is_root = os.geteuid() == 0
        self.uids = UidPool(cfg.sandbox_uid_base, cfg.sandbox_uid_count) if self.is_root else None
        self._bwrap = bwrap_args(cfg, self.exe) if self.mode == "bwrap" else None
        self._prefixes = interpreter_prefixes(self.exe)

    def describe(self) -> str:
        """One line saying how code is isolated."""
        who = "per-call unprivileged uid" if self.is_root else f"uid {os.geteuid()}"
        return f"{self.mode} sandbox, {who}, interpreter {self.exe}"

    def _settings(self, uid: int | None, tmp: str, timeout_s: float) -> dict:
        cfg = self.cfg
        cpu = cfg.cpu_seconds or int(math.ceil(timeout_s)) + 1
        nproc = cfg.max_processes
        if uid is None and self.mode == "rlimit":  # shared uid: the limit counts all its processes
            nproc += count_user_processes(os.geteuid())
        settings = {"cpu_seconds": cpu, "memory_bytes": cfg.memory_bytes, "max_file_bytes": cfg.max_file_bytes,
                    "max_open_files": cfg.max_open_files, "max_processes": nproc, "uid": uid,
                    "print_last": cfg.print_last_expression,
                    "site_dirs": site_dirs(self.exe) if cfg.fast_startup else None, "lifeline": True}
        if self.mode == "rlimit":
            reads = ["/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc", "/proc", "/dev", "/sys", tmp,
                     *self._prefixes, *cfg.extra_ro_binds]
            settings.update(audit=True, no_new_privs=True, unshare_net=True, keep_read_search=uid is not None,
                            read_roots=reads, write_roots=[tmp, "/dev/null"], host_pid=os.getpid(),
                            cleanup_dir=tmp)
        return settings

    def run(self, code: str, timeout_s: float | None = None) -> SandboxResult:
        """Runs ``code``; never raises for anything the code does."""
        cfg = self.cfg
        timeout_s = cfg.timeout_s if timeout_s is None else timeout_s
        token = uuid.uuid4().hex
        uid, slot = self.uids.acquire() if self.uids else (None, None)
        tmp = "/tmp" if self.mode == "bwrap" else tempfile.mkdtemp(prefix="arpo_sbx_")
        try:
            if self.mode == "rlimit" and uid is not None:
                os.chown(tmp, uid, uid)
            env = {"PATH": f"{os.path.dirname(self.exe)}:/usr/local/bin:/usr/bin:/bin", "HOME": tmp,
                   "TMPDIR": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "USER": "sandbox",
                   "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "NUMEXPR_NUM_THREADS": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": tmp,
                   "ARPO_SANDBOX_TOKEN": token, **cfg.env}
            settings = repr(self._settings(uid, tmp, timeout_s))
            flags = "-IS" if cfg.fast_startup else "-I"
            argv = [self.exe, flags, "-c", RUNNER_SOURCE, settings]
            if self._bwrap:
                argv = [*self._bwrap, *argv]
            return self._launch(argv, env, tmp, code, timeout_s, token, uid)
        finally:
            if tmp != "/tmp":
                shutil.rmtree(tmp, ignore_errors=True)
            if slot is not None:
                self.uids.release(slot)

    def _launch(self, argv, env, tmp, code, timeout_s, token, uid) -> SandboxResult:
        t0 = time.monotonic()
        info_r = info_w = None
        if self._bwrap:  # bwrap reports its namespace's init pid on this pipe
            info_r, info_w = os.pipe()
            argv = [argv[0], "--info-fd", str(info_w), *argv[1:]]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=tmp if self.mode == "rlimit" else "/",
                                    start_new_session=True, close_fds=True, pass_fds=(info_w,) if info_w else ())
        except OSError as exc:
            return SandboxResult("", f"could not start the interpreter: {exc}", None, None, 0, 0,
                                 time.monotonic() - t0, self.mode, token, uid)
        finally:
            if info_w is not None:
                os.close(info_w)
        watch = None
        if self.mode == "rlimit":
            watch = functools.partial(_dir_too_big, tmp, self.cfg.tmp_bytes)
        try:
            out = pump(proc, _frame(code), t0 + timeout_s,
                       keep=self.cfg.max_output_chars * 4, kill_bytes=self.cfg.output_kill_bytes, watchdog=watch)
        finally:
            self._cleanup(proc, token, uid, info_r)
        return SandboxResult(out.stdout, out.stderr, proc.returncode, out.killed, out.stdout_bytes,
                             out.stderr_bytes, time.monotonic() - t0, self.mode, token, uid)

    def _cleanup(self, proc: subprocess.Popen, token: str, uid: int | None, info_r: int | None) -> None:
        """Kills everything the call started and returns once it is all gone."""
        exited = proc.poll() is not None
        pidfd = None
        if info_r is not None:
            init_pid = _read_child_pid(info_r)
            os.close(info_r)
            if init_pid is not None and not exited:
                pidfd = _pidfd_if_ours(init_pid, token)
        try:
            if pidfd is not None:  # the sandbox's pid 1; the kernel then empties its namespace
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        # bwrap --as-pid-1 exits only after its pid 1 was reaped, i.e. after the namespace
        # was emptied; when we killed it first, wait on pid 1 ourselves.
        gone = self.mode == "bwrap" and exited
        if pidfd is not None:
            gone = bool(select.select([pidfd], [], [], 5.0)[0])
            os.close(pidfd)
        if not gone:
            kill_pids(lambda: find_pids(uid=uid, token=token))


def _frame(code: str) -> bytes:
    """The runner's stdin: the code's length, a newline, the code."""
    data = code.encode("utf-8", "replace")
    return b"%d\n" % len(data) + data


def _read_child_pid(fd: int) -> int | None:
    os.set_blocking(fd, False)
    try:
        info = json.loads(os.read(fd, 1 << 16) or b"{}")
        return int(info["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pidfd_if_ours(pid: int, token: str) -> int | None:
    """A pidfd for ``pid`` if it is the live sandbox holding ``token`` (guards against pid reuse)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if has_token(str(pid), f"ARPO_SANDBOX_TOKEN={token}".encode()):
        return pidfd
    os.close(pidfd)
    return None


def _dir_too_big(path: str, limit: int) -> bool:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
            if total > limit:
                return True
    return False
