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

Integrity (``checksums.py``): once orbax has finalised a step (every process's files written,
the step directory committed; in the background thread of an asynchronous save, before older
steps are deleted), process 0 seals it with ``arpo_checksums.json``: relative path, size and
sha256 of every file of the step, written atomically as the step's last file. ``meta`` records
that the step is to be sealed. On restore the step is verified first (the hashing is shared
among the processes and the verdict all-gathered, so every process falls back alike): a missing
or extra file, a wrong size or sha256, or a damaged manifest makes the step incomplete or
corrupt, like an unreadable one: one line names the step, the file and the cause, and the
previous step is restored. A step whose ``meta`` asks for a manifest but has none (killed
between orbax's commit and the seal) is incomplete. A step written before checksums existed
(no manifest, no such ``meta`` entry) is restored unverified, with a one-line warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from arpo_jax.training import checksums
from arpo_jax.training.distributed import allgather_objects

logger = logging.getLogger(__name__)

STATE, META = "state", "meta"
SEALED_KEY = "checksum_manifest"  # in ``meta``: the step is sealed with this manifest file


class NoValidCheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored."""


class CorruptCheckpointError(NoValidCheckpointError):
    """One checkpoint step failed verification (or is not sealed); ``cause`` names the file."""

    def __init__(self, step: int, directory: str, cause: str):
        self.step, self.cause = int(step), cause
        super().__init__(f"checkpoint step {step} in {directory} is incomplete or corrupt ({cause})")


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


_SPEC = re.compile(r"\s*\[(tensorstore_spec|source locations)\b.*$", re.S)
_DRIVER = re.compile(r'Error opening "\w+" driver: ')
_OBJECT = re.compile(r"<[^<>]{0,300}? at 0x[0-9a-fA-F]+>")


def short_cause(e: BaseException, step_dir: str | os.PathLike | None = None, limit: int = 240) -> str:
    """One readable line for a failed read: the exception type and its first message line, with
    tensorstore spec dumps, driver chains and ``<... at 0x...>`` reprs cut and paths made
    relative to ``step_dir``."""
    text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = _OBJECT.sub("<...>", _DRIVER.sub("", _SPEC.sub("", text)))
    if step_dir is not None:
        text = text.replace(os.fspath(step_dir).rstrip("/") + "/", "")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _SealingManager(ocp.CheckpointManager):
    """``CheckpointManager`` that calls ``seal(step)`` once a step is final.

    orbax calls ``_finalize_checkpoint`` on every process after the step's files are written by
    all processes and its directory is committed (in the finalize thread of an asynchronous
    save, inline otherwise), and before it deletes the steps beyond ``max_to_keep``.
    """

    seal: Callable[[int], None] = staticmethod(lambda step: None)

    def _finalize_checkpoint(self, step: int):
        """orbax's last step before deleting old steps, then the seal."""
        out = super()._finalize_checkpoint(step)
        self.seal(step)
        return out


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
        if not callable(getattr(ocp.CheckpointManager, "_finalize_checkpoint", None)):
            raise RuntimeError("this orbax-checkpoint has no CheckpointManager._finalize_checkpoint, where "
                               "checkpoint steps are sealed with checksums (tested with 0.12.8)")
        self.directory = _normalize_dir(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
            create=True)
        self._mngr = _SealingManager(self.directory, options=options)
        self._mngr.seal = self._seal

    # ------------------------------------------------------------------ queries
    def all_steps(self) -> list[int]:
        """Steps whose write completed (ascending); a listed step may still be corrupt."""
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> epath.Path:
        """The directory of ``step`` (orbax's default step names: the bare number)."""
        return epath.Path(self.directory) / str(int(step))

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
        meta = dict(meta or {}, step=int(step), **{SEALED_KEY: checksums.MANIFEST})
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)})
        saved = self._mngr.save(int(step), args=args, force=True)
        if wait:
            self.wait()
        return bool(saved)

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is finished (and sealed)."""
        self._mngr.wait_until_finished()

    def _seal(self, step: int) -> None:
        """Writes the checksum manifest of a finalised step (process 0; called by orbax)."""
        step_dir = self.step_dir(step)
        if jax.process_index() != 0 or not step_dir.exists():  # no step dir: the commit failed (orbax raises)
            return
        try:
            checksums.write_manifest(step_dir, step)
        except Exception as e:  # noqa: BLE001 - re-raised with one readable line
            raise RuntimeError(f"checkpoint step {step}: could not write its checksum manifest "
                               f"({short_cause(e, step_dir)})") from e

    # ---------------------------------------------------------------- restoring
    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of ``step`` (cheap: no arrays are read)."""
        out = self._mngr.restore(int(step), args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        meta = out[META]
        if not isinstance(meta, dict):
            raise ValueError(f"checkpoint step {step}: metadata is not a JSON object")
        return meta

    def verify(self, step: int) -> None:
        """Checks ``step`` against its checksum manifest (a collective: every process calls it and
        hashes its share of the files); raises ``CorruptCheckpointError`` naming the first bad file.
        A step without a manifest passes, with a warning, only if it predates checksums."""
        step_dir = self.step_dir(step)
        sealed = checksums.has_manifest(step_dir)
        mine = checksums.verify(step_dir, step, (jax.process_index(), jax.process_count())) if sealed else []
        gathered = allgather_objects((sealed, mine))
        problems = list(dict.fromkeys(p for _, ps in gathered for p in ps))
        if problems:
            more = f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
            raise CorruptCheckpointError(step, self.directory, problems[0] + more)
        if all(s for s, _ in gathered):
            return
        if self.read_meta(step).get(SEALED_KEY):
            raise CorruptCheckpointError(step, self.directory, f"{checksums.MANIFEST}: missing (never sealed)")
        _say(f"checkpoint step {step} in {self.directory} has no checksum manifest (written before checksums "
             f"were added); restoring it unverified")

    def restore_step(self, step: int, target: Any | Callable[[dict], Any]) -> Restored:
        """Restores exactly ``step`` after verifying it; ``target`` is an abstract pytree or
        ``meta -> abstract pytree``."""
        self.verify(step)
        meta = self.read_meta(step)
        abstract = target(meta) if callable(target) else target
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()})
        out = self._mngr.restore(int(step), args=args)
        return Restored(int(step), out[STATE], out[META], [])

    def restore(self, target: Any | Callable[[dict], Any], step: int | None = None) -> Restored | None:
        """Restores ``step``, or (``step=None``) the latest step that verifies and reads back completely.

        Incomplete or corrupt newer steps (failed verification or read) are reported (one line
        each), skipped and, once an older step has been restored, deleted (so the resumed run can
        save those steps again). An explicit ``step`` that fails raises (``CorruptCheckpointError``
        when it fails verification).
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
                reason = e.cause if isinstance(e, CorruptCheckpointError) else short_cause(e, self.step_dir(s))
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
