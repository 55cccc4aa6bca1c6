"""Training checkpoints with orbax: asynchronous saves, keep-last-k, exact resume, fallback.

A checkpoint step holds two items:
  ``state``: a pytree of arrays (parameters, optimizer state, RNG key data, ...), restored
    straight into the target shardings given by an abstract pytree of ``ShapeDtypeStruct``
    with ``NamedSharding`` (nothing is materialised on one device first);
  ``meta``: a JSON dict (step, data-loader position, skip counters, configs).

Orbax writes each step into a temporary directory and renames (or, on object stores such as
``gs://``, marks) it only when complete, so a process killed during a save leaves no step
that ``all_steps`` lists. A step that is listed but cannot be read (files deleted or
truncated) is reported and the previous step is used instead (``restore`` with ``step=None``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

STATE, META = "state", "meta"


class NoValidCheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored."""


@dataclasses.dataclass
class Restored:
    """What ``Checkpointer.restore`` returns."""

    step: int
    state: Any
    meta: dict[str, Any]
    skipped_steps: list[int]  # newer steps that were found incomplete or corrupt


def abstract_like(tree: Any) -> Any:
    """A pytree of ``ShapeDtypeStruct`` (with each leaf's sharding) shaped like ``tree``."""
    def one(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(one, tree)


def _normalize_dir(directory: str | os.PathLike) -> str:
    directory = os.fspath(directory)
    return directory if "://" in directory else os.path.abspath(directory)


def _say(msg: str) -> None:
    logger.warning(msg)
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


class Checkpointer:
    """``orbax.checkpoint.CheckpointManager`` for training state + JSON metadata.

    Args:
      directory: local path or any path orbax supports (``gs://bucket/run/ckpt``).
      keep: keep the last ``keep`` steps (older ones are deleted after a new save completes).
      async_save: write in a background thread; ``save`` returns once the arrays are copied
        to host memory, so the caller may donate or overwrite them right away.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        self.directory = _normalize_dir(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
            create=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ queries
    def all_steps(self) -> list[int]:
        """Steps whose write completed (ascending); a listed step may still be corrupt."""
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------- saving
    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None, *, wait: bool = False) -> bool:
        """Saves ``state`` (array pytree) and ``meta`` (JSON dict) as ``step``.

        Returns False when ``step`` is already saved (nothing is written). ``wait`` blocks
        until the write is complete (use it before exiting).
        """
        if step in self._mngr.all_steps():
            if wait:
                self.wait()
            return False
        meta = dict(meta or {}, step=int(step))
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)})
        saved = self._mngr.save(int(step), args=args, force=True)
        if wait:
            self.wait()
        return bool(saved)

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is finished."""
        self._mngr.wait_until_finished()

    # ---------------------------------------------------------------- restoring
    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of ``step`` (cheap: no arrays are read)."""
        out = self._mngr.restore(int(step), args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        meta = out[META]
        if not isinstance(meta, dict):
            raise ValueError(f"checkpoint step {step}: metadata is not a JSON object")
        return meta

    def restore_step(self, step: int, target: Any | Callable[[dict], Any]) -> Restored:
        """Restores exactly ``step``; ``target`` is an abstract pytree or ``meta -> abstract pytree``."""
        meta = self.read_meta(step)
        abstract = target(meta) if callable(target) else target
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()})
        out = self._mngr.restore(int(step), args=args)
        return Restored(int(step), out[STATE], out[META], [])

    def restore(self, target: Any | Callable[[dict], Any], step: int | None = None) -> Restored | None:
        """Restores ``step``, or (``step=None``) the latest step that reads back completely.

        Incomplete or corrupt newer steps are reported (one message each), skipped and, once an
        older step has been restored, deleted (so the resumed run can save those steps again).
        Returns None when the directory holds no checkpoint; raises ``NoValidCheckpointError``
        when there are checkpoints but none can be read.
        """
        if step is not None:
            if step not in self.all_steps():
                raise FileNotFoundError(f"checkpoint step {step} not found in {self.directory} "
                                        f"(have {self.all_steps()})")
            return self.restore_step(step, target)
        steps = self.all_steps()
        if not steps:
            return None
        bad: list[int] = []
        for s in reversed(steps):
            try:
                restored = self.restore_step(s, target)
            except Exception as e:  # noqa: BLE001 - any read failure means "unusable step"
                bad.append(s)
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                older = [t for t in steps if t < s]
                nxt = f"falling back to step {older[-1]}" if older else "no older checkpoint left"
                _say(f"checkpoint step {s} in {self.directory} is incomplete or corrupt ({reason}); {nxt}")
                continue
            for b in bad:  # an unreadable step would block saving that step number again
                self._mngr.delete(b)
            if bad:
                _say(f"removed unreadable checkpoint step(s) {bad}; resuming from step {s}")
            restored.skipped_steps = bad
            return restored
        raise NoValidCheckpointError(f"no checkpoint in {self.directory} could be restored (tried steps {bad})")

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_resume(resume: str, checkpointer: Checkpointer) -> int | None:
    """Interprets a ``resume`` setting: "auto" → latest step (or None), "none" → None, "N" → step N.

    "none" refuses a directory that already holds checkpoints, so a new run never mixes
    its steps with an old run's.
    """
    resume = str(resume).strip().lower()
    steps = checkpointer.all_steps()
    if resume == "auto":
        return -1 if steps else None  # -1: latest valid, with fallback
    if resume in ("none", "never", "false", "no"):
        if steps:
            raise ValueError(f"train.resume=none but {checkpointer.directory} already holds checkpoint steps "
                             f"{steps}; use resume=auto or a new checkpoint_dir")
        return None
    try:
        step = int(resume)
    except ValueError:
        raise ValueError(f"train.resume must be 'auto', 'none' or a step number, got {resume!r}") from None
    if step not in steps:
        raise ValueError(f"train.resume={step}: no such checkpoint step in {checkpointer.directory} (have {steps})")
    return step
