"""Process sandbox for model-written Python: bubblewrap, or an explicitly chosen weaker fallback.

Each call is a fresh interpreter process. With bubblewrap (``bwrap``, the default) it gets
new PID, IPC, UTS, network and cgroup namespaces, a read-only view of the system and of the
interpreter's own prefixes only (not the repository, not /root, not /etc/shadow) and a
private size-capped /tmp; the interpreter is the namespace's pid 1, so when it ends the
kernel kills everything it started. When bubblewrap cannot run, the tool refuses to start
(``SandboxUnavailable``, one line saying why and how to fix it) unless the user chose the
"rlimit" fallback: the interpreter runs without a mount namespace, confined by Landlock
(reads under the system and interpreter directories, writes only in a private per-call
directory, no TCP), a new network namespace when root, and resource limits; what it does not
stop is listed in docs/sandbox.md. In both modes a process started as root switches to a
per-call unprivileged uid before running model code (no capability survives), one cgroup per
call (``cgroups``) caps the memory and processes of the whole call, a wall-clock deadline
kills the whole process tree, and the sandbox kills itself when its host dies (its stdin,
kept open by the host, reaches EOF).
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
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import cgroups
from .config import PythonToolConfig
from .fallback import disk_too_big, landlock_abi, rlimit_problem
from .procs import UidPool, count_user_processes, find_pids, has_token, kill_pids, pump
from .interpreter_info import interpreter, interpreter_prefixes, site_dirs

log = logging.getLogger("arpo_jax.tools")
RUNNER_SOURCE = (Path(__file__).parent / "_runner.py").read_text()
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "mime.types")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
BWRAP_FIX = ("install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces "
             "(sysctl kernel.unprivileged_userns_clone=1 and kernel.apparmor_restrict_unprivileged_userns=0) "
             "or run as root; or choose the weaker fallback explicitly with tools.python.sandbox=rlimit")
_RUNNER_EXITS = {71: "Landlock could not confine the process", 72: "the kernel refused a new network namespace",
                 73: "no_new_privs could not be set", cgroups.JOIN_FAILED: "the call could not join its cgroup"}


class SandboxUnavailable(RuntimeError):
    """The requested sandbox cannot run here; the message says why and how to fix it."""
_warned: set[str] = set()
_lock = threading.Lock()


@dataclass
class SandboxResult:
    """Raw outcome of one sandboxed run (bytes already decoded)."""

    stdout: str
    stderr: str
    returncode: int | None
    killed: str | None  # "timeout", "output", "tmp", "memory" or None
    stdout_bytes: int
    stderr_bytes: int
    wall_s: float
    mode: str
    token: str
    uid: int | None
    memory_peak: int | None = None


def _covered(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def bwrap_args(cfg: PythonToolConfig, exe: str) -> list[str]:
    """The bubblewrap command line up to (not including) the interpreter.

    The private /tmp is mounted before the interpreter's directories are bound, so an
    interpreter that lives under /tmp (a clone or virtual environment there) stays visible.
    """
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
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(cfg.tmp_bytes), "--tmpfs", "/tmp"]
    bound = ["/usr", "/etc"]
    made = ["/tmp", "/proc", "/dev"]  # mount points already there: never re-created (would reset /tmp's mode)
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
    return [*args, "--chdir", "/tmp"]


def choose_mode(cfg: PythonToolConfig) -> str:
    """Checks that ``cfg.sandbox`` can run here; raises ``SandboxUnavailable`` (why, and the fix) if not."""
    exe = interpreter(cfg)
    if cfg.sandbox == "rlimit":
        why = rlimit_problem(cfg, exe)
        if why:
            raise SandboxUnavailable(f"python tool: sandbox=rlimit cannot run here: {why}")
        _loud("rlimit", "python tool: sandbox=rlimit chosen: the weaker fallback (no mount namespace; "
                        "see docs/sandbox.md for what it does not stop)")
        return "rlimit"
    if not shutil.which("bwrap"):
        raise SandboxUnavailable(f"python tool: bubblewrap is not installed; {BWRAP_FIX}")
    return "bwrap"


def _loud(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class Sandbox:
    """Runs code strings in fresh sandboxed interpreters; thread-safe.

    Construction checks the chosen mode with one real call and raises ``SandboxUnavailable``
    when it does not work: the tool never runs model code in a weaker sandbox than asked for.
    """

    def __init__(self, cfg: PythonToolConfig, mode: str | None = None):
        self.cfg = cfg
        self.exe = interpreter(cfg)
        self.mode = mode or choose_mode(cfg)
        self.is_root = os.geteuid() == 0
        self.uids = UidPool(cfg.sandbox_uid_base, cfg.sandbox_uid_count) if self.is_root else None
        self.memory = cgroups.plan_memory(cfg.memory_bytes, cfg.max_processes, cfg.fallback_processes,
                                          cfg.memory_cap)
        self.landlock = landlock_abi() if self.mode == "rlimit" else 0
        self._bwrap = bwrap_args(cfg, self.exe) if self.mode == "bwrap" else None
        self._prefixes = interpreter_prefixes(self.exe)
        self._self_test()

    def _self_test(self) -> None:
        r = self.run("import os, sys; print('ok', os.getuid(), sys.version_info[0])", timeout_s=60)
        if r.returncode == 0 and r.stdout.startswith("ok"):
            return
        last_line = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:300]
        why = _RUNNER_EXITS.get(r.returncode or 0, last_line)
        fix = BWRAP_FIX if self.mode == "bwrap" else "see docs/sandbox.md"
        raise SandboxUnavailable(f"python tool: the {self.mode} sandbox does not work here ({why}); {fix}")

    def describe(self) -> str:
        """One line saying how code is isolated."""
        who = "per-call unprivileged uid" if self.is_root else f"uid {os.geteuid()}"
        extra = f", landlock ABI {self.landlock or 'unavailable'}" if self.mode == "rlimit" else ""
        return f"{self.mode} sandbox, {who}{extra}, memory cap {self.memory.kind}, interpreter {self.exe}"

    def _settings(self, uid: int | None, tmp: str, timeout_s: float) -> dict:
        cfg, mem = self.cfg, self.memory
        cpu = cfg.cpu_seconds or int(math.ceil(timeout_s)) + 1
        nproc = mem.max_processes
        if uid is None and self.mode == "rlimit":  # shared uid: the limit counts all its processes
            nproc += count_user_processes(os.geteuid())
        settings = {"cpu_seconds": cpu, "memory_bytes": mem.process_bytes, "max_file_bytes": cfg.max_file_bytes,
                    "max_open_files": cfg.max_open_files, "max_processes": nproc, "uid": uid,
                    "print_last": cfg.print_last_expression,
                    "site_dirs": site_dirs(self.exe) if cfg.fast_startup else None, "lifeline": True}
        if self.mode == "rlimit":
            etc = ["/etc/" + n for n in _ETC_FILES]
            reads = [*_SYSTEM_DIRS, *etc, *_DEVICES, *self._prefixes, *site_dirs(self.exe), *cfg.extra_ro_binds]
            settings.update(no_new_privs=True, unshare_net=self.is_root, landlock=self.landlock > 0,
                            read_roots=reads, write_roots=[tmp, "/dev/null"], cleanup_dir=tmp)
            if self.is_root:  # a size-capped tmpfs on the call's directory: the kernel enforces tmp_bytes
                settings.update(tmp_dir=tmp, tmp_bytes=cfg.tmp_bytes)
        return settings

    def run(self, code: str, timeout_s: float | None = None) -> SandboxResult:
        """Runs ``code``; never raises for anything the code does."""
        cfg = self.cfg
        timeout_s = cfg.timeout_s if timeout_s is None else timeout_s
        token = uuid.uuid4().hex
        uid, slot = self.uids.acquire() if self.uids else (None, None)
        tmp = "/tmp" if self.mode == "bwrap" else tempfile.mkdtemp(prefix="arpo_sbx_")
        group = None
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
            if self.memory.kind.startswith("cgroup"):
                group = cgroups.CallCgroup(self.memory, token)
                argv = group.wrap(argv)
            return self._launch(argv, env, tmp, code, timeout_s, token, uid, group)
        finally:
            if group is not None:
                group.kill()
                group.remove()
            if tmp != "/tmp":
                shutil.rmtree(tmp, ignore_errors=True)
            if slot is not None:
                self.uids.release(slot)

    def _launch(self, argv, env, tmp, code, timeout_s, token, uid, group) -> SandboxResult:
        t0 = time.monotonic()
        info_r = info_w = None
        if self._bwrap:  # bwrap reports its namespace's init pid on this pipe
            info_r, info_w = os.pipe()
            i = argv.index(self._bwrap[0])
            argv = [*argv[: i + 1], "--info-fd", str(info_w), *argv[i + 1:]]
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
            pids = group.pids if group is not None else functools.partial(find_pids, uid=uid, token=token)
            watch = functools.partial(disk_too_big, tmp, pids, self.cfg.tmp_bytes)
        try:
            out = pump(proc, _frame(code), t0 + timeout_s,
                       keep=self.cfg.max_output_chars * 4, kill_bytes=self.cfg.output_kill_bytes, watchdog=watch)
        finally:
            self._cleanup(proc, token, uid, info_r, group)
        killed = out.killed
        if group is not None and killed is None and group.oom_killed():
            killed = "memory"
        if proc.returncode == cgroups.JOIN_FAILED and group is not None:
            log.error("python tool: a call could not join its cgroup; it was not run")
        return SandboxResult(out.stdout, out.stderr, proc.returncode, killed, out.stdout_bytes,
                             out.stderr_bytes, time.monotonic() - t0, self.mode, token, uid,
                             group.peak_bytes() if group is not None else None)

    def _cleanup(self, proc: subprocess.Popen, token: str, uid: int | None, info_r: int | None,
                 group: cgroups.CallCgroup | None) -> None:
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
        if group is not None:
            group.kill()
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
        if group is not None:
            gone = group.kill()
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
