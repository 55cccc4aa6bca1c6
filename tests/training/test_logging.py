"""Metrics logging: JSONL (resume-safe), TensorBoard events, W&B optional, rollout dumps, process 0 only."""

import json
import struct

import jax.numpy as jnp
import numpy as np

from arpo_jax.training.metrics_log import MetricsLogger, RolloutDumpWriter, to_python


def _tb_scalars(logdir):
    """(tag, step, value) of every scalar in the event files under ``logdir`` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            out += [(v.tag, ev.step, v.simple_value) for v in ev.summary.value]
    return out


def test_jsonl_tensorboard_and_resume_truncation(tmp_path, capsys):
    with MetricsLogger(tmp_path, total_steps=4, config={"a": 1}, progress=True) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": jnp.float32(1.0 / step), "skipped": np.int32(0), "note": "x"})
        log.log(4, {"loss": float("nan"), "skipped": 1})
        log.message("hello")
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and lines[1]["loss"] == 0.5 and lines[3]["loss"] is None
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}
    scalars = _tb_scalars(tmp_path / "tb")
    assert ("loss", 2, 0.5) in scalars and not any(t == "note" for t, _, _ in scalars)
    assert "hello" in capsys.readouterr().err
    # a run resumed from step 2 drops the later lines (and a half-written last line)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    with MetricsLogger(tmp_path, total_steps=4, start_step=2, progress=False, tensorboard=False) as log:
        log.log(3, {"loss": 0.25})
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_wandb_is_optional_and_other_processes_write_nothing(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with MetricsLogger(tmp_path / "a", total_steps=1, wandb=True, progress=False, tensorboard=False) as log:
            log.log(1, {"loss": 1.0})
        assert "wandb package is not installed" in capsys.readouterr().err
    with MetricsLogger(tmp_path / "b", total_steps=1, active=False) as log:
        assert log.log(1, {"loss": np.float32(2.0)}) == {"loss": 2.0}
        log.message("hidden")
    assert not (tmp_path / "b").exists() and "hidden" not in capsys.readouterr().err
    assert RolloutDumpWriter(tmp_path / "b", active=False).write(1, [{"x": 1}]) is None


def test_rollout_dump_one_line_per_trajectory(tmp_path):
    writer = RolloutDumpWriter(tmp_path, active=True)
    trajs = [{"text": "<python>1</python>", "tree": {"prompt": 0, "parent": None, "branch_step": 0},
              "entropy_at_tools": np.asarray([0.5, 1.25], np.float32), "tool_calls": ["python"],
              "reward": jnp.float32(1.0), "advantage": np.float64(-0.5)}] * 3
    path = writer.write(7, trajs)
    rows = [json.loads(s) for s in path.read_text().splitlines()]
    assert path.name == "step_00000007.jsonl" and len(rows) == 3
    assert rows[2] == {"step": 7, "index": 2, **to_python(trajs[0])}
    assert rows[0]["entropy_at_tools"] == [0.5, 1.25] and rows[0]["reward"] == 1.0
    writer.write(7, trajs[:1])  # rewritten after a resume: replaced, not appended
    assert len(path.read_text().splitlines()) == 1
