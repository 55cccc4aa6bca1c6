"""The one training loop (``training.loop``) on a scripted task: logging cadence, the status
fields SFT and RL share, the divergence stop, resume of the data position and skip counters."""

import dataclasses
import json

import numpy as np
import pytest

from arpo_jax.models import ModelSourceConfig, make_mesh
from arpo_jax.training.loop import TrainTask
from arpo_jax.training.loop_config import LoggingConfig, TrainConfig
from arpo_jax.data.rl_data import PromptLoader
from arpo_jax.training.signals import TrainingDiverged
from arpo_jax.training.update import OptimizerConfig, cached_optimizer

TINY = dict(family="qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
            num_kv_heads=1, head_dim=8)
STATUS_KEYS = ["status", "step", "total_steps", "skipped_total", "checkpoint_dir", "python_sandbox", "exported",
               "loss"]


@dataclasses.dataclass(frozen=True)
class ScriptedConfig:
    model: ModelSourceConfig
    train: TrainConfig
    logging: LoggingConfig


class _Tokenizer:
    def __len__(self):
        return 64


class ScriptedTask(TrainTask):
    """Steps that only advance the data loader; the loss is the loss scale (NaN when injected)."""

    config_key = "scripted_config"

    def __init__(self, tmp_path, **train):
        train = dict(steps=7, out_dir=str(tmp_path / "run"), async_checkpoint=False, save_every=0,
                     export_at_end=False) | train
        self.config = ScriptedConfig(ModelSourceConfig(config=TINY, tokenizer="unused", mesh=(1, 1, 1)),
                                     TrainConfig(**train), LoggingConfig(every=3, progress=False, tensorboard=False))
        self.tokenizer, self.mesh = _Tokenizer(), make_mesh((1, 1, 1))
        self.loader = PromptLoader(8, 2, seed=0)
        self.optimizer = cached_optimizer(OptimizerConfig(lr=1e-3))
        self.total_steps = self.config.train.steps
        self.sandbox = {"mode": "bwrap", "line": "python tool: scripted"}
        self.seen: list[tuple[int, int]] = []  # (step, updates done before it)

    def step(self, state, loss_scale, updates_done):
        self.seen.append((state.step + 1, updates_done))
        return {"loss": float(loss_scale), "batch": self.loader.next_batch()[0],
                "skipped": int(not np.isfinite(float(loss_scale)))}

    def validation_due(self, step):
        return step == 4

    def validate(self, state):
        return {"val/score": 1.0}

    def summary(self, last):
        return {"loss": last.get("loss")}


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_logging_every_skips_validation_and_status_fields(tmp_path):
    task = ScriptedTask(tmp_path, debug_nan_step=5)
    summary = task.run()
    out = tmp_path / "run"
    rows = _rows(out)
    # every 3rd step, plus the validated (4), skipped (5) and last (7) steps
    assert [r["step"] for r in rows] == [3, 4, 5, 6, 7]
    assert rows[1]["val/score"] == 1.0 and rows[2]["skipped"] == 1 and rows[3]["skipped_total"] == 1
    assert all(r["tools/python_sandbox_rlimit"] == 0.0 for r in rows)
    assert [u for _, u in task.seen] == [0, 1, 2, 3, 4, 4, 5]  # the skipped update is not counted
    status = json.loads((out / "status.json").read_text())
    assert list(status) == STATUS_KEYS and status == summary
    assert (status["status"], status["step"], status["skipped_total"], status["python_sandbox"]) == (
        "finished", 7, 1, "bwrap")
    assert status["checkpoint_dir"].endswith("run/checkpoints")


def test_divergence_stops_with_a_checkpoint_and_the_same_status_fields(tmp_path):
    task = ScriptedTask(tmp_path, debug_nan_step=2, debug_nan_count=9, max_consecutive_skips=2)
    with pytest.raises(TrainingDiverged, match="stopped at step 3: 2 consecutive"):
        task.run()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert list(status) == STATUS_KEYS[:7] + ["message", "loss"]
    assert (status["status"], status["step"], status["skipped_total"]) == ("diverged", 3, 2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["3"]


def test_resume_restores_the_data_position_and_skip_counters(tmp_path, capsys):
    straight = ScriptedTask(tmp_path / "a", debug_nan_step=2)
    straight.run()
    first = ScriptedTask(tmp_path / "b", steps=4, debug_nan_step=2)
    first.run()
    second = ScriptedTask(tmp_path / "b", debug_nan_step=2)
    summary = second.run()
    assert "resumed from step 4" in capsys.readouterr().err
    assert summary["step"] == 7 and summary["skipped_total"] == 1
    assert second.seen == straight.seen[4:]
    drop = lambda r: {k: v for k, v in r.items() if k != "time"}  # noqa: E731
    assert [drop(r) for r in _rows(tmp_path / "b" / "run")] == [drop(r) for r in _rows(tmp_path / "a" / "run")]
