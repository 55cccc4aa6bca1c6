"""Process plumbing for the sandbox: bounded output capture, process lookup and killing, uids."""

from __future__ import annotations

import fcntl
import os
import random
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class _Capture:
    """Keeps the first and last ``keep`` bytes of a stream and counts the rest."""

    def __init__(self, keep: int):
        self.keep = keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.keep:
                del self.tail[: len(self.tail) - self.keep]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if not self.tail:
            return head
        skipped = self.total - len(self.head) - len(self.tail)
        tail = self.tail.decode("utf-8", "replace")
        if skipped > 0:
            return f"{head}\n... [{skipped} bytes of output omitted] ...\n{tail}"
        return head + tail


@dataclass
class PumpResult:
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    killed: str | None


def pump(proc: subprocess.Popen, data: bytes, deadline: float, keep: int, kill_bytes: int,
         watchdog: Callable[[], bool] | None = None, exit_grace_s: float = 0.5) -> PumpResult:
    """Feeds stdin (left open), drains stdout/stderr with bounded memory, until EOF or a limit.

    Returns what was read and why the process must be killed ("timeout" past ``deadline``,
    "output" past ``kill_bytes`` printed, "tmp" when ``watchdog`` fires), or None.
    """
    caps = {proc.stdout.fileno(): _Capture(keep), proc.stderr.fileno(): _Capture(keep)}
    sel = selectors.DefaultSelector()
    view, off = memoryview(data), 0
    if data:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    for fd in caps:
        sel.register(fd, selectors.EVENT_READ)
    killed, next_watch, exited_by = None, time.monotonic() + 0.2, None
    try:
        while len(sel.get_map()) and killed is None:
            now = time.monotonic()
            if exited_by is not None and now >= exited_by:
                break  # finished; orphans still hold the pipes and are killed by the caller
            if now >= deadline:
                killed = "timeout"
                break
            if exited_by is None and proc.poll() is not None:
                exited_by = now + exit_grace_s
            for key, _ in sel.select(max(0.0, min(deadline - now, 0.2))):
                fd = key.fd
                if fd not in caps:
                    try:
                        off += os.write(fd, view[off: off + 65536])
                    except BlockingIOError:
                        pass
                    except OSError:  # the process is gone or closed stdin: stop feeding it
                        off = len(view)
                    if off >= len(view):  # stdin stays open: the runner's lifeline to us
                        sel.unregister(fd)
                    continue
                try:
                    chunk = os.read(fd, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    continue
                caps[fd].add(chunk)
                if sum(c.total for c in caps.values()) > kill_bytes:
                    killed = "output"
                    break
            if watchdog is not None and time.monotonic() >= next_watch:
                next_watch = time.monotonic() + 0.2
                if watchdog():
                    killed = "tmp"
    finally:
        sel.close()
    out, err = caps[proc.stdout.fileno()], caps[proc.stderr.fileno()]
    return PumpResult(out.text(), err.text(), out.total, err.total, killed)


def _proc_uid(pid: str, live_only: bool = True) -> int | None:
    """Real uid of a process; None for vanished ones and (with ``live_only``) zombies."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if live_only and line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                    return None
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def has_token(pid: str, needle: bytes) -> bool:
    """Whether the environment of process ``pid`` contains ``needle``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def find_pids(uid: int | None = None, token: str | None = None) -> list[int]:
    """Live processes whose real uid is ``uid``, or whose environment holds the sandbox token."""
    me = os.getpid()
    needle = f"ARPO_SANDBOX_TOKEN={token}".encode() if token else None
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        owner = _proc_uid(name)
        if owner is None:
            continue
        if owner == uid or (needle is not None and has_token(name, needle)):
            pids.append(int(name))
    return pids


def count_user_processes(uid: int) -> int:
    """Processes (with their threads, zombies included) owned by ``uid``: what RLIMIT_NPROC counts."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and _proc_uid(name, live_only=False) == uid:
            try:
                total += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    return total


def kill_pids(find: Callable[[], list[int]], rounds: int = 100) -> int:
    """SIGKILLs what ``find`` returns until nothing is left (a fork bomb refills the list)."""
    killed = 0
    for _ in range(rounds):
        pids = find()
        if not pids:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    return killed


class UidPool:
    """Hands out distinct unprivileged uids to concurrent calls, across threads and processes.

    Threads of one process share a set; processes share one lock file in which uid
    ``base + i`` is claimed by a POSIX lock on byte ``i``.
    """

    def __init__(self, base: int, count: int):
        self.base, self.count = base, count
        path = os.path.join(tempfile.gettempdir(), "arpo_jax_sandbox_uids.lock")
        self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # kept open: closing drops locks
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> tuple[int, int]:
        """Returns (uid, slot); give the slot back with ``release``."""
        start = random.randrange(self.count)  # spread reuse: a uid's zombies may linger briefly
        with self._lock:
            for k in range(self.count):
                i = (start + k) % self.count
                if i in self._held:
                    continue
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, i)
                except OSError:
                    continue
                self._held.add(i)
                return self.base + i, i
        raise RuntimeError(f"all {self.count} sandbox uids are in use")

    def release(self, slot: int) -> None:
        """Frees a uid taken by ``acquire``."""
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot)
            self._held.discard(slot)
