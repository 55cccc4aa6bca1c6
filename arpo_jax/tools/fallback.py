"""The rlimit fallback's confinement helpers: Landlock, interpreter readability, disk watchdog.

Without bubblewrap there is no mount namespace, so the fallback relies on the kernel's
Landlock (Linux >= 5.13, no privileges needed) to limit what model code can open, and on
the per-call uid (when the host is root), which only works when that uid can read the
interpreter: ``rlimit_problem`` says when it cannot.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .config import PythonToolConfig
from .interpreter_info import interpreter_prefixes, site_dirs


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: not available)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return max(0, int(libc.syscall(444, None, 0, 1)))  # landlock_create_ruleset(NULL, 0, VERSION)
    except (OSError, AttributeError):
        return 0


def blocked_for_others(path: str) -> str | None:
    """The first component of ``path`` that an unrelated unprivileged uid cannot traverse or read."""
    parts = Path(os.path.realpath(path)).parts
    for i in range(1, len(parts) + 1):
        p = str(Path(*parts[:i]))
        try:
            st = os.stat(p)
        except OSError:
            return p
        last = i == len(parts)
        need = 0o001 if not last else 0o005 if os.path.isdir(p) or os.access(p, os.X_OK) else 0o004
        if st.st_mode & need != need:
            return p
    return None


def rlimit_problem(cfg: PythonToolConfig, exe: str) -> str | None:
    """Why the fallback cannot run model code without privileges here, or None."""
    if os.geteuid() != 0:
        return None  # model code runs as this user, who can read the interpreter
    for path in (exe, *interpreter_prefixes(exe), *site_dirs(exe), *cfg.extra_ro_binds):
        blocked = blocked_for_others(path)
        if blocked:
            mode = f"{os.stat(blocked).st_mode & 0o7777:04o}" if os.path.exists(blocked) else "missing"
            return (f"the interpreter {exe} is not readable by the unprivileged sandbox uid ({blocked}: {mode}); "
                    f"set tools.python.python_executable to an interpreter outside root-only directories, "
                    f"or install bubblewrap")
    return None


def disk_too_big(path: str, pids: Callable[[], list[int]], limit: int) -> bool:
    """Whether the private directory plus files the call holds open after unlinking them exceed ``limit``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
            if total > limit:
                return True
    seen = set()
    for pid in pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if st.st_nlink == 0 and (st.st_dev, st.st_ino) not in seen:  # unlinked: invisible to the walk
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
        if total > limit:
            return True
    return False
