"""Token entropy around tool calls: the paper's key observation, measured on rollout dumps.

Positions are counted over **model tokens only** (mask 1): observation tokens (mask 0) are
skipped, so position 0 of the "after result" curve is the first token the model generates
after a tool result, -1 the last model token before it (the closing ``</python>`` tag), and
so on. The "around call" curve is anchored at the first token of each tool call's opening tag
(``call_start`` of the dump's ``tool_calls`` entries, a response-token position that
``arpo-jax eval`` records; calls without it are left out of that curve; ``start``/``end`` of
a call are its result's span), and "response start" at the first token of the response
(the baseline H_initial is measured there). By default windows stay
inside the model segment they start in (``clip_segments``): positive positions stop at the next
tool result, negative ones at the previous one.

Dump records are the rollout's ``trajectory_record`` dicts, one JSON object per line; only
``entropies`` is required (``mask`` defaults to all ones, ``obs_spans`` and ``tool_calls`` to
none). Bad lines and records are counted and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

JSON_NAME = "entropy_around_tools.json"
PNG_NAME = "entropy_around_tools.png"


@dataclasses.dataclass
class ReadStats:
    """What ``iter_dump_records`` read and skipped."""

    files: int = 0
    records: int = 0
    bad_lines: int = 0
    bad_records: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)

    def skip(self, kind: str, message: str) -> None:
        """Counts one skipped line or record; keeps the first few messages."""
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.messages) < 10:
            self.messages.append(message)


def dump_files(paths: Iterable[str | Path]) -> list[Path]:
    """The JSONL files named by ``paths``: files as given, directories searched recursively."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"dump path {str(p)!r} does not exist")
    return files


def iter_dump_records(paths: Iterable[str | Path], stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Yields every JSON object of the dump files (bad lines counted in ``stats`` and skipped)."""
    stats = stats if stats is not None else ReadStats()
    for path in dump_files(paths):
        stats.files += 1
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    stats.skip("bad_lines", f"{path}:{i}: invalid JSON ({e.msg})")
                    continue
                if not isinstance(rec, dict):
                    stats.skip("bad_lines", f"{path}:{i}: not a JSON object")
                    continue
                stats.records += 1
                yield rec


@dataclasses.dataclass
class PositionStats:
    """Running sum, sum of squares and count of a value per relative position in [lo, hi]."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        size = self.hi - self.lo + 1
        self.sum = np.zeros(size, np.float64)
        self.sumsq = np.zeros(size, np.float64)
        self.count = np.zeros(size, np.int64)
        self.anchors = 0

    def add(self, rel: np.ndarray, values: np.ndarray) -> None:
        """Adds ``values`` at relative positions ``rel`` (out-of-window ones dropped)."""
        keep = (rel >= self.lo) & (rel <= self.hi)
        idx, v = rel[keep] - self.lo, values[keep].astype(np.float64)
        np.add.at(self.sum, idx, v)
        np.add.at(self.sumsq, idx, v * v)
        np.add.at(self.count, idx, 1)

    def to_dict(self) -> dict[str, Any]:
        """``positions``, ``mean``, ``count``, ``stderr`` (None where undefined), ``anchors``."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum / n
            var = (self.sumsq - n * mean * mean) / (n - 1)
            stderr = np.sqrt(np.maximum(var, 0.0) / n)
        as_list = lambda a, ok: [float(x) if k else None for x, k in zip(a, ok)]  # noqa: E731
        return {"positions": list(range(self.lo, self.hi + 1)), "mean": as_list(mean, n > 0),
                "count": n.tolist(), "stderr": as_list(stderr, n > 1), "anchors": self.anchors}


def _int_or_none(x: Any) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


@dataclasses.dataclass
class EntropyAnalysis:
    """Accumulates entropy-by-position curves over dump records (``add``), then ``result``."""

    window: int = 30
    clip_segments: bool = True

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        w = self.window
        self.after_result = PositionStats(-w, w)
        self.around_call = PositionStats(-w, w)
        self.response_start = PositionStats(0, w)
        self.by_tool: dict[str, PositionStats] = {}
        self.total_sum = 0.0
        self.total_count = 0
        self.trajectories = 0
        self.read = ReadStats()

    def add(self, rec: dict[str, Any]) -> bool:
        """Adds one dump record; False (and counted as bad) when it has no usable entropies."""
        ent = rec.get("entropies")
        if not isinstance(ent, (list, tuple)) or not ent:
            self.read.skip("bad_records", f"record uid={rec.get('uid')}: no entropies")
            return False
        try:
            ent_arr = np.asarray(ent, np.float64)
            mask = np.asarray(rec.get("mask") or np.ones(len(ent_arr)), np.int64)
        except (TypeError, ValueError):
            self.read.skip("bad_records", f"record uid={rec.get('uid')}: non-numeric entropies or mask")
            return False
        n = min(len(ent_arr), len(mask))
        ent_arr, mask = ent_arr[:n], mask[:n] > 0
        model_ent = ent_arr[mask]
        m = len(model_ent)
        # prefix[t] = number of model tokens before response position t (t in 0..n)
        prefix = np.concatenate([[0], np.cumsum(mask)])
        calls = [c if isinstance(c, dict) else {} for c in rec.get("tool_calls") or []]
        raw_spans = rec.get("obs_spans")
        if raw_spans is None:  # older dumps: the results' spans are only in the tool calls
            raw_spans = [(c.get("start"), c.get("end")) for c in calls if c.get("end", 0) != c.get("start", 0)]
        spans = []
        for span in raw_spans or []:
            if isinstance(span, (list, tuple)) and len(span) == 2:
                s, e = _int_or_none(span[0]), _int_or_none(span[1])
                if s is not None and e is not None and 0 <= s <= e:
                    spans.append((min(s, n), min(e, n)))
        spans.sort()
        # model-index boundaries: segment j runs [starts[j], ends[j])
        starts = [0] + [int(prefix[e]) for _, e in spans]
        ends = [int(prefix[s]) for s, _ in spans] + [m]
        self.trajectories += 1
        self.total_sum += float(model_ent.sum())
        self.total_count += m
        pos = np.arange(m)
        self._add_window(self.response_start, pos, model_ent, 0, 0, ends[0])
        tool_at = {(_int_or_none(c.get("start")), _int_or_none(c.get("end"))): c.get("tool") for c in calls}
        for i, (s, e) in enumerate(spans):
            anchor = int(prefix[e])
            lo, hi = (starts[i], ends[i + 1]) if self.clip_segments else (0, m)
            self._add_window(self.after_result, pos, model_ent, anchor, lo, hi)
            tool = tool_at.get((s, e), calls[i].get("tool") if i < len(calls) else None)
            tool = str(tool) if tool else "parse_error" if tool == "" else "unknown"
            stats = self.by_tool.setdefault(tool, PositionStats(-self.window, self.window))
            self._add_window(stats, pos, model_ent, anchor, lo, hi)
        for call in calls:
            start = _int_or_none(call.get("call_start"))
            if start is None or not 0 <= start < n or not mask[start]:
                continue
            anchor = int(prefix[start])
            seg = max(j for j in range(len(starts)) if starts[j] <= anchor)
            lo, hi = (starts[seg], ends[seg]) if self.clip_segments else (0, m)
            self._add_window(self.around_call, pos, model_ent, anchor, lo, hi)
        return True

    @staticmethod
    def _add_window(stats: PositionStats, pos: np.ndarray, ent: np.ndarray, anchor: int, lo: int, hi: int) -> None:
        stats.anchors += 1
        sel = slice(max(lo, anchor + stats.lo), min(hi, anchor + stats.hi + 1))
        if sel.start < sel.stop:
            stats.add(pos[sel] - anchor, ent[sel])

    def add_all(self, records: Iterable[dict[str, Any]]) -> EntropyAnalysis:
        """Adds every record; returns self."""
        for rec in records:
            self.add(rec)
        return self

    def result(self) -> dict[str, Any]:
        """The JSON-serialisable analysis (curves, overall mean, counts of what was read)."""
        overall = self.total_sum / self.total_count if self.total_count else None
        return {
            "window": self.window,
            "clip_segments": self.clip_segments,
            "position_unit": "model tokens (mask 1); 0 = first model token after the anchor",
            "trajectories": self.trajectories,
            "model_tokens": self.total_count,
            "overall_mean": overall,
            "after_result": self.after_result.to_dict(),
            "around_call": self.around_call.to_dict(),
            "response_start": self.response_start.to_dict(),
            "after_result_by_tool": {t: s.to_dict() for t, s in sorted(self.by_tool.items())},
            "read": dataclasses.asdict(self.read),
        }


def _curve(ax, curve: dict[str, Any], label: str, color: str) -> None:
    pts = [(p, m, s or 0.0) for p, m, s in zip(curve["positions"], curve["mean"], curve["stderr"]) if m is not None]
    if not pts:
        return
    x, y, e = (np.asarray(v, np.float64) for v in zip(*pts))
    ax.plot(x, y, color=color, lw=1.6, label=f"{label} (n={curve['anchors']})")
    ax.fill_between(x, y - e, y + e, color=color, alpha=0.25, lw=0)


def plot_entropy(result: dict[str, Any], path: str | Path) -> Path:
    """Writes the two-panel PNG (around tool results / around tool calls) with ± 1 std error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    overall = result.get("overall_mean")
    panels = ((axes[0], "after_result", "tool result", "position after the tool result (model tokens)"),
              (axes[1], "around_call", "tool call", "position from the start of the tool call (model tokens)"))
    for ax, key, label, xlabel in panels:
        _curve(ax, result[key], label, "tab:red" if key == "after_result" else "tab:purple")
        if key == "after_result":
            _curve(ax, result["response_start"], "response start", "tab:blue")
        if overall is not None:
            ax.axhline(overall, color="gray", ls="--", lw=1, label=f"mean over all model tokens ({overall:.3f})")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean token entropy (nats)")
    fig.suptitle(f"Token entropy around tool use ({result['trajectories']} trajectories)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def analyze_entropy(paths: Sequence[str | Path] | None = None, out_dir: str | Path = ".", *, window: int = 30,
                    clip_segments: bool = True, records: Iterable[dict[str, Any]] | None = None,
                    plot: bool = True) -> dict[str, Any]:
    """Reads dumps (``paths``) and/or ``records``; writes ``entropy_around_tools.{json,png}``.

    Returns the result dict (also written as JSON) with ``files`` naming what was written.
    """
    analysis = EntropyAnalysis(window=window, clip_segments=clip_segments)
    if paths:
        analysis.add_all(iter_dump_records(paths, analysis.read))
    if records is not None:
        analysis.add_all(records)
    result = analysis.result()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / JSON_NAME)}
    if plot:
        files["png"] = str(plot_entropy(result, out / PNG_NAME))
    result["files"] = files
    (out / JSON_NAME).write_text(json.dumps(result, indent=2) + "\n")
    if analysis.read.bad_lines or analysis.read.bad_records:
        print(f"warning: skipped {analysis.read.bad_lines} bad lines and {analysis.read.bad_records} bad records "
              f"(first: {analysis.read.messages[0]})", file=sys.stderr)
    return result
