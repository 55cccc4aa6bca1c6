"""Run safety shared by the SFT and RL loops: preemption signals and non-finite step guards.

``PreemptionHandler`` turns SIGTERM (what TPU/GPU schedulers send before preempting) into a
flag the loop checks between steps; the loop then writes a final checkpoint and exits.
``SkipGuard`` counts updates skipped because the loss or gradient was not finite and says
when too many consecutive ones mean the run has diverged.
"""

from __future__ import annotations

import dataclasses
import signal
import threading

import jax
import numpy as np


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last checkpoint holds the last good state."""


class PreemptionHandler:
    """Context manager: while active, the given signals set ``requested`` instead of killing.

    A second identical signal while a request is pending restores the default behaviour
    (so a stuck process can still be stopped). Signal handlers can only be installed from
    the main thread; elsewhere the handler is inactive and ``requested`` only reflects
    ``request()`` calls.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._flag = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):  # noqa: ARG002
        if self._flag:  # second signal: give up on the graceful path
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self._flag = True
        self.signal_name = signal.Signals(signum).name

    def request(self, reason: str = "request") -> None:
        """Asks the loop to stop as if a signal had arrived (tests, callbacks)."""
        self._flag = True
        self.signal_name = reason

    @property
    def requested(self) -> bool:
        """True once a stop was requested on any process (agreed across hosts)."""
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(self._flag)], np.int32))
        return bool(np.asarray(flags).any())

    def __enter__(self) -> "PreemptionHandler":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        self._previous.clear()


@dataclasses.dataclass
class SkipGuard:
    """Counts skipped (non-finite) updates; ``tripped`` after ``max_consecutive`` in a row.

    ``max_consecutive`` <= 0 disables the stop (skips are still counted).
    """

    max_consecutive: int = 5
    total: int = 0
    consecutive: int = 0

    def update(self, skipped: bool) -> None:
        """Records one step's outcome."""
        if skipped:
            self.total += 1
            self.consecutive += 1
        else:
            self.consecutive = 0

    @property
    def tripped(self) -> bool:
        return self.max_consecutive > 0 and self.consecutive >= self.max_consecutive

    def state_dict(self) -> dict[str, int]:
        """For checkpoint metadata."""
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.total, self.consecutive = int(d.get("total", 0)), int(d.get("consecutive", 0))

    def message(self, step: int, checkpoint_dir: str) -> str:
        """The one-line stop message."""
        return (f"training stopped at step {step}: {self.consecutive} consecutive updates had a non-finite loss "
                f"or gradient (train.max_consecutive_skips={self.max_consecutive}); parameters are those of the "
                f"last finite update, saved in {checkpoint_dir} (lower the learning rate or check the data, "
                f"then resume)")
