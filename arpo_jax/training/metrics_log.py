"""Training logs: console progress bar, metrics JSONL, TensorBoard, optional W&B, rollout dumps.

Only process 0 writes (``active`` defaults to ``is_main_process()``); other processes get
no-op objects, so loops can call them unconditionally. Values may be Python numbers, NumPy
or JAX scalars; non-finite numbers are written to JSON as ``null``.

Files under ``out_dir``:
  ``metrics.jsonl``: one line per logged step, ``{"step": N, "time": unix_s, <metric>: value}``;
    a resumed run first drops lines with a step after the resume point, so the file always
    reads as one uninterrupted run.
  ``tb/``: TensorBoard event files (tensorboardX; no TensorFlow needed).
  ``rollouts/step_XXXXXXXX.jsonl``: one line per trajectory (``RolloutDumpWriter``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from arpo_jax.training.distributed import is_main_process

DEFAULT_PROGRESS_KEYS = ("loss", "grad_norm", "lr", "skipped_total")


def to_python(x: Any) -> Any:
    """JAX/NumPy values → plain JSON-able Python (non-finite floats → None), recursively."""
    if isinstance(x, Mapping):
        return {str(k): to_python(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_python(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if hasattr(x, "__array__") and not isinstance(x, (int, float)):
        arr = np.asarray(x)
        if arr.ndim:
            return to_python(arr.tolist())
        x = arr.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, np.floating):
        return to_python(float(x))
    return x


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drops the lines of a metrics file whose ``step`` is greater than ``after_step``."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a half-written last line from a killed process
    path.write_text("".join(s + "\n" for s in kept))


class MetricsLogger:
    """Per-step metrics to the console, JSONL, TensorBoard and (optionally) Weights & Biases.

    Args:
      out_dir: run directory.
      total_steps: for the progress bar's ETA.
      start_step: the step the run (re)starts from; later JSONL lines are dropped.
      jsonl / tensorboard / progress: enable each sink.
      wandb: log to Weights & Biases too; only when the package is installed (else a warning).
      config: run config (dict) recorded in W&B and in ``out_dir/config.json``.
      progress_keys: metrics shown next to the progress bar.
      active: write at all (default: only on process 0).
    """

    def __init__(self, out_dir: str | os.PathLike, *, total_steps: int, start_step: int = 0, jsonl: bool = True,
                 tensorboard: bool = True, progress: bool = True, wandb: bool = False, wandb_project: str = "arpo_jax",
                 run_name: str | None = None, config: dict | None = None,
                 progress_keys: Iterable[str] = DEFAULT_PROGRESS_KEYS, active: bool | None = None):
        self.active = is_main_process() if active is None else active
        self.out_dir = Path(out_dir)
        self.progress_keys = tuple(progress_keys)
        self._jsonl = self._tb = self._wandb = self._bar = None
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.out_dir / "config.json").write_text(json.dumps(to_python(config), indent=2))
        if jsonl:
            path = self.out_dir / "metrics.jsonl"
            truncate_jsonl(path, start_step)
            self._jsonl = open(path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if wandb:
            self._wandb = self._init_wandb(wandb_project, run_name, config)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=run_name or "train", file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.5, smoothing=0.1)

    def _init_wandb(self, project: str, run_name: str | None, config: dict | None):
        try:
            import wandb
        except ImportError:
            self.message("logging.wandb=true but the wandb package is not installed; not logging to W&B")
            return None
        id_file = self.out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        id_file.write_text(run_id)
        return wandb.init(project=project, name=run_name, id=run_id, resume="allow", config=to_python(config or {}),
                          dir=str(self.out_dir))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Writes one step's metrics everywhere; returns them as plain Python values."""
        values = to_python(dict(metrics))
        if not self.active:
            return values
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **values}) + "\n")
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, int(step))
        if self._wandb is not None:
            self._wandb.log(numeric, step=int(step))
        if self._bar is not None:
            self._bar.update(max(int(step) - self._bar.n, 0))
            shown = {k: _fmt(values[k]) for k in self.progress_keys if k in values}
            self._bar.set_postfix(shown, refresh=False)
        return values

    def message(self, text: str) -> None:
        """A line on the console that does not break the progress bar (process 0 only)."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes every sink."""
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl = self._tb = self._wandb = self._bar = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class RolloutDumpWriter:
    """Per-step rollout dumps: ``out_dir/rollouts/step_XXXXXXXX.jsonl``, one line per trajectory.

    Each trajectory is whatever dict the RL loop passes (text, tree position, entropies at tool
    boundaries, tool calls/results, reward, advantage...); arrays become lists. Rewriting a
    step (after a resume) replaces its file.
    """

    def __init__(self, out_dir: str | os.PathLike, *, subdir: str = "rollouts", active: bool | None = None):
        self.active = is_main_process() if active is None else active
        self.dir = Path(out_dir) / subdir

    def path(self, step: int) -> Path:
        return self.dir / f"step_{int(step):08d}.jsonl"

    def write(self, step: int, trajectories: Iterable[Mapping[str, Any]]) -> Path | None:
        """Writes one step's trajectories; returns the file (None on processes other than 0)."""
        if not self.active:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for i, traj in enumerate(trajectories):
                f.write(json.dumps({"step": int(step), "index": i, **to_python(dict(traj))}) + "\n")
        tmp.replace(path)
        return path
