"""Concurrent host-side execution of tool calls for the rollout engine.

The rollout parses each finished segment, submits its call and keeps decoding other slots;
the answer comes back as a ``Future[Observation]``. ``run_batch`` runs many calls at once and
returns their observations in order. Calls run on a thread pool (tools mostly wait on
subprocesses or sockets), each with its own deadline; per-tool statistics are kept.

    with ToolDispatcher.from_configs(PythonToolConfig(), SearchConfig(cache_path=...)) as d:
        call = d.parse(segment_text)            # ToolCall | ParseError | None
        future = d.submit(call)                 # Future[Observation]
        obs = future.result()                   # obs.text is ready to tokenize and append
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass

from .config import DispatcherConfig, ProtocolConfig, PythonToolConfig, SearchConfig
from .protocol import Observation, ParseError, ToolCall, ToolOutput, format_observation, parse_tool_call

log = logging.getLogger("arpo_jax.tools")


@dataclass
class ToolStats:
    """Counters of one tool (or of "parse" for malformed calls)."""

    calls: int = 0
    failures: int = 0
    timeouts: int = 0
    no_output: int = 0
    total_latency_s: float = 0.0
    max_latency_s: float = 0.0

    @property
    def mean_latency_s(self) -> float:
        """Average submit-to-answer time."""
        return self.total_latency_s / self.calls if self.calls else 0.0

    def add(self, obs: Observation) -> None:
        """Counts one observation."""
        self.calls += 1
        self.failures += not obs.ok
        self.timeouts += obs.status == "timeout"
        self.no_output += obs.status == "no_output"
        self.total_latency_s += obs.latency_s
        self.max_latency_s = max(self.max_latency_s, obs.latency_s)


class ToolDispatcher:
    """Runs tool calls concurrently; thread-safe.

    Args:
        tools: tool objects by name; each has ``run(body, timeout_s) -> ToolOutput`` and
            optionally ``default_timeout_s``.
        config: pool size, per-tool caps and the grace period of ``run_batch``.
        protocol: tag names and the observation format.
    """

    def __init__(self, tools: Mapping[str, object], config: DispatcherConfig | None = None,
                 protocol: ProtocolConfig | None = None):
        self.tools = dict(tools)
        self.config = config or DispatcherConfig()
        self.protocol = protocol or ProtocolConfig()
        self._pool = ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="arpo-tool")
        self._limits = {name: threading.BoundedSemaphore(n) for name, n in self.config.tool_concurrency.items()}
        self._stats: dict[str, ToolStats] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_configs(cls, python: PythonToolConfig | None = None, search: SearchConfig | None = None,
                     config: DispatcherConfig | None = None, protocol: ProtocolConfig | None = None) -> ToolDispatcher:
        """Builds the python and/or search tools from their configs (None = tool left out)."""
        tools: dict[str, object] = {}
        if python is not None:
            from .python_tool import PythonTool

            tools["python"] = PythonTool(python)
        if search is not None:
            from .search import SearchTool

            tools["search"] = SearchTool(search)
        return cls(tools, config, protocol)

    def parse(self, text: str, stop: str | None = None) -> ToolCall | ParseError | None:
        """``parse_tool_call`` with this dispatcher's protocol."""
        return parse_tool_call(text, self.protocol, stop)

    def _timeout(self, tool: str, timeout_s: float | None) -> float:
        if timeout_s is not None:
            return timeout_s
        return float(getattr(self.tools.get(tool), "default_timeout_s", 60.0))

    def submit(self, call: ToolCall | ParseError, timeout_s: float | None = None) -> Future:
        """Starts one call; the future yields its ``Observation`` and never raises."""
        start = time.monotonic()
        if isinstance(call, ParseError) or call is None:
            message = call.message if call is not None else "No tool call found."
            fut: Future = Future()
            meta = {"reason": getattr(call, "reason", "none")}
            fut.set_result(self._finish("parse", ToolOutput(message, "parse_error", meta), start, ""))
            return fut
        return self._pool.submit(self._run, call, self._timeout(call.tool, timeout_s), start)

    def submit_text(self, text: str, stop: str | None = None, timeout_s: float | None = None) -> Future | None:
        """Parses ``text`` and submits its call; None when the text holds no call at all."""
        call = self.parse(text, stop)
        return None if call is None else self.submit(call, timeout_s)

    def run_batch(self, calls: Iterable[ToolCall | ParseError], timeout_s: float | None = None) -> list[Observation]:
        """Runs calls concurrently; their observations, in order. A call still running
        ``deadline_grace_s`` after its deadline is answered with a timeout observation."""
        calls = list(calls)
        start = time.monotonic()
        futures = [self.submit(c, timeout_s) for c in calls]
        out = []
        for call, fut in zip(calls, futures):
            tool = getattr(call, "tool", "")
            wait_until = start + self._timeout(tool, timeout_s) + self.config.deadline_grace_s
            try:
                out.append(fut.result(timeout=max(0.0, wait_until - time.monotonic())))
            except FutureTimeout:
                out.append(self._finish(tool or "parse", ToolOutput(
                    "Error: the tool did not answer in time.", "timeout"), start, tool))
        return out

    def _run(self, call: ToolCall, timeout_s: float, start: float) -> Observation:
        tool = self.tools.get(call.tool)
        if tool is None:
            names = ", ".join(f"<{t}>" for t in self.tools) or "none"
            out = ToolOutput(f"Error: the tool <{call.tool}> is not available; available tools: {names}.", "error")
            return self._finish(call.tool, out, start, call.tool)
        limit = self._limits.get(call.tool)
        try:
            if limit is not None:
                limit.acquire()
            try:
                remaining = max(0.1, timeout_s - (time.monotonic() - start))
                out = tool.run(call.body, remaining)
            finally:
                if limit is not None:
                    limit.release()
        except Exception as exc:  # a tool bug must not kill the rollout
            log.exception("tool %s failed", call.tool)
            out = ToolOutput(f"Error: the {call.tool} tool failed internally ({type(exc).__name__}).", "error")
        return self._finish(call.tool, out, start, call.tool)

    def _finish(self, key: str, out: ToolOutput, start: float, tool: str) -> Observation:
        obs = Observation(text=format_observation(out.content, self.protocol), content=out.content, tool=tool,
                          status=out.status, latency_s=time.monotonic() - start, meta=dict(out.meta))
        with self._lock:
            self._stats.setdefault(key, ToolStats()).add(obs)
        return obs

    def stats(self) -> dict[str, dict]:
        """Per-tool counters: calls, failures, timeouts, no_output, latency (mean, max, total)."""
        with self._lock:
            return {k: {**asdict(s), "mean_latency_s": s.mean_latency_s} for k, s in self._stats.items()}

    def reset_stats(self) -> None:
        """Clears the counters (e.g. at each training step)."""
        with self._lock:
            self._stats.clear()

    def describe(self) -> dict[str, str]:
        """How each tool runs (sandbox mode, backend)."""
        return {name: getattr(t, "describe", lambda: type(t).__name__)() for name, t in self.tools.items()}

    def close(self) -> None:
        """Waits for running calls and stops the pool."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ToolDispatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
