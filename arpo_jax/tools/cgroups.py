"""Per-call memory and process caps for the sandbox: one cgroup per call, or a process-count cap.

A call's processes share one limit that forking cannot multiply. Where the host can create
cgroups (root, with the memory and pids controllers of cgroup v2 or v1 mounted writable),
every call gets its own cgroup ``arpo_jax/<token>``: ``memory`` caps the resident memory
of all its processes together (swap included where the kernel accounts it) and ``pids``
caps their number; the kernel's OOM killer ends the call when it goes over. Elsewhere the
cap is arithmetic: each process gets ``memory_bytes / n`` of address space and the call at
most ``n`` processes and threads (``RLIMIT_AS`` × ``RLIMIT_NPROC``), so the total stays
under ``memory_bytes``. ``plan_memory`` says which one is active; ``arpo-jax tools check``
prints it.

The launched process joins its cgroup before anything runs: the command is prefixed with
a two-line ``/bin/sh`` that writes its own pid to ``cgroup.procs`` and then ``exec``s the
sandbox, which fails closed (exit 126, nothing runs) when it cannot join.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass

ROOT = "/sys/fs/cgroup"
BASE = "arpo_jax"
JOIN_FAILED = 126


@dataclass(frozen=True)
class MemoryPlan:
    """How one call's memory is capped.

    Attributes:
        kind: "cgroup-v2", "cgroup-v1" or "processes".
        call_bytes: memory of the whole call (all processes together).
        process_bytes: ``RLIMIT_AS`` of each process.
        max_processes: processes and threads the call may have at once.
        why: why a cgroup is not used (empty when it is).
    """

    kind: str
    call_bytes: int
    process_bytes: int
    max_processes: int
    why: str = ""

    def describe(self) -> str:
        """One line for ``tools check`` and logs."""
        gib = self.call_bytes / 2**30
        if self.kind.startswith("cgroup"):
            return (f"{self.kind}: {gib:g} GiB for the whole call, at most {self.max_processes} processes; "
                    f"{self.process_bytes / 2**30:g} GiB address space per process")
        return (f"process count: {self.max_processes} processes × {self.process_bytes / 2**20:g} MiB address "
                f"space = {gib:g} GiB for the whole call (no cgroup: {self.why})")


def _controller_dirs_v2() -> tuple[str, ...] | None:
    """The v2 hierarchy's root when it offers memory and pids, else None."""
    for root in (ROOT, os.path.join(ROOT, "unified")):
        try:
            with open(os.path.join(root, "cgroup.controllers")) as f:
                ctrl = f.read().split()
        except OSError:
            continue
        if "memory" in ctrl and "pids" in ctrl:
            return (root,)
    return None


def _own_v1_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path in the v1 hierarchies (from /proc/self/cgroup)."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                for c in ctrls.split(","):
                    out[c] = path
    except (OSError, ValueError):
        pass
    return out


def _controller_dirs_v1() -> tuple[str, ...] | None:
    """This process's own memory and pids cgroups (v1), so that the host's limits still apply."""
    own = _own_v1_cgroups()
    dirs = tuple(os.path.join(ROOT, c, own.get(c, "/").lstrip("/")) for c in ("memory", "pids"))
    return dirs if all(os.path.isfile(os.path.join(d, "cgroup.procs")) for d in dirs) else None


@functools.lru_cache(maxsize=1)
def detect() -> tuple[str, tuple[str, ...]] | str:
    """(kind, controller roots) where this process can create per-call cgroups, else why not."""
    if os.geteuid() != 0:
        return "not root"
    found = [("cgroup-v2", _controller_dirs_v2()), ("cgroup-v1", _controller_dirs_v1())]
    found = [(k, roots) for k, roots in found if roots]
    if not found:
        return "no writable memory and pids controllers under /sys/fs/cgroup"
    why = ""
    for kind, roots in found:
        try:
            for root in roots:
                base = os.path.join(root, BASE)
                os.makedirs(base, exist_ok=True)
                if kind == "cgroup-v2":
                    with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory +pids")
            return kind, tuple(os.path.join(r, BASE) for r in roots)
        except OSError as exc:
            why = f"{kind}: {exc.strerror or exc}"
    return why


def plan_memory(memory_bytes: int, max_processes: int, fallback_processes: int, mode: str = "auto") -> MemoryPlan:
    """The active per-call cap for these settings (``mode``: auto, cgroup or processes)."""
    found = detect() if mode != "processes" else "memory_cap=processes"
    if isinstance(found, tuple):
        return MemoryPlan(found[0], memory_bytes, memory_bytes, max_processes)
    if mode == "cgroup":
        raise RuntimeError(f"python tool: memory_cap=cgroup requested but per-call cgroups are unavailable: {found}")
    n = max(1, min(fallback_processes, max_processes))
    return MemoryPlan("processes", memory_bytes, memory_bytes // n, n, why=found)


class CallCgroup:
    """The cgroup of one call: created with its limits, joined by the command, killed and removed."""

    def __init__(self, plan: MemoryPlan, token: str):
        kind, roots = detect()  # type: ignore[misc]
        self.v2 = kind == "cgroup-v2"
        self.dirs = [os.path.join(r, token) for r in roots]
        for d in self.dirs:
            os.mkdir(d)
        try:
            if self.v2:
                self._write("memory.max", plan.call_bytes)
                self._write("memory.swap.max", 0, optional=True)
                self._write("pids.max", plan.max_processes)
            else:
                self._write("memory.limit_in_bytes", plan.call_bytes)
                self._write("memory.memsw.limit_in_bytes", plan.call_bytes, optional=True)
                self._write("pids.max", plan.max_processes)
        except OSError:
            self.remove()
            raise

    def _write(self, name: str, value: int, optional: bool = False) -> None:
        for d in self.dirs:
            path = os.path.join(d, name)
            if optional and not os.path.exists(path):
                continue
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(value))
                return
        raise OSError(f"cgroup file {name} not found")

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run from a shell that first moves itself into this cgroup (fails closed)."""
        procs = [os.path.join(d, "cgroup.procs") for d in self.dirs]
        script = (f'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit {JOIN_FAILED}; shift; done\n'
                  'shift\nexec "$@"')
        return ["/bin/sh", "-c", script, "sh", *procs, "--", *argv]

    def pids(self) -> list[int]:
        """Processes currently in the cgroup."""
        out: set[int] = set()
        for d in self.dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                pass
        return sorted(out)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this call for going over the memory cap."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        for d in self.dirs:
            try:
                with open(os.path.join(d, name)) as f:
                    for line in f:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
            except (OSError, ValueError):
                pass
        return False

    def peak_bytes(self) -> int | None:
        """The call's peak memory, where the kernel reports it."""
        for d in self.dirs:
            for name in ("memory.peak", "memory.max_usage_in_bytes"):
                try:
                    with open(os.path.join(d, name)) as f:
                        return int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
        return None

    def kill(self, timeout_s: float = 10.0) -> bool:
        """Kills every process of the call; True once the cgroup is empty."""
        if self.v2:
            try:
                with open(os.path.join(self.dirs[0], "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)
        return not self.pids()

    def remove(self) -> None:
        """Removes the (empty) cgroup directories; retries while the kernel still holds exiting tasks."""
        for d in self.dirs:
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
