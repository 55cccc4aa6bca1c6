"""The concurrent dispatcher: ordering, deadlines, parse errors, statistics."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import pytest

from arpo_jax.tools import (
    DispatcherConfig,
    Observation,
    PythonToolConfig,
    SearchConfig,
    ToolDispatcher,
    ToolOutput,
)


class _EchoSearch:
    name = "search"
    default_timeout_s = 5.0

    def run(self, body, timeout_s=None):
        return ToolOutput(f"Page 1: {body.strip()}", "ok")


class _Stubborn:
    """Ignores its deadline (a buggy tool)."""

    default_timeout_s = 0.3

    def run(self, body, timeout_s=None):
        time.sleep(2.0)
        return ToolOutput("late", "ok")


class _Broken:
    def run(self, body, timeout_s=None):
        raise RuntimeError("bug")


@pytest.fixture(scope="module")
def dispatcher():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = ToolDispatcher.from_configs(PythonToolConfig(timeout_s=5.0), None, DispatcherConfig(max_workers=16))
    d.tools["search"] = _EchoSearch()
    d.tools["stubborn"] = _Stubborn()
    d.tools["broken"] = _Broken()
    yield d
    d.close()


def test_run_batch_keeps_order_and_formats(dispatcher):
    texts = ["<python>print(1)</python>", "<search>paris</search>", "<python>print(2)", "<python>print(3)</python>"]
    calls = [dispatcher.parse(t) for t in texts]
    obs = dispatcher.run_batch(calls)
    assert [o.content for o in obs[:2]] == ["1", "Page 1: paris"]
    assert obs[2].status == "parse_error" and "not closed" in obs[2].content
    assert obs[3].text == " <result>\n3\n</result>"
    assert all(isinstance(o, Observation) for o in obs)


def test_submit_returns_a_future_and_text_without_call_gives_none(dispatcher):
    fut = dispatcher.submit_text("<think>x</think><python>print('a')", stop="</python>")
    assert fut.result(timeout=30).content == "a"
    assert dispatcher.submit_text("<answer>\\boxed{1}</answer>") is None


def test_calls_run_concurrently(dispatcher):
    calls = [dispatcher.parse(f"<python>import time\ntime.sleep(1.0)\nprint({i})</python>") for i in range(10)]
    t0 = time.monotonic()
    obs = dispatcher.run_batch(calls)
    elapsed = time.monotonic() - t0
    assert [o.content for o in obs] == [str(i) for i in range(10)]
    assert elapsed < 5.0, f"10 x 1 s calls took {elapsed:.1f}s: not concurrent"


def test_per_call_deadline(dispatcher):
    call = dispatcher.parse("<python>import time\ntime.sleep(30)</python>")
    obs = dispatcher.submit(call, timeout_s=0.5).result(timeout=30)
    assert obs.status == "timeout" and obs.latency_s < 4


def test_unknown_broken_and_stubborn_tools_answer(dispatcher):
    from arpo_jax.tools import ToolCall

    obs = dispatcher.run_batch([ToolCall("calculator", "1+1"), ToolCall("broken", "x")])
    assert obs[0].status == "error" and "not available" in obs[0].content
    assert obs[1].status == "error" and "failed internally" in obs[1].content
    d = ToolDispatcher({"stubborn": _Stubborn()}, DispatcherConfig(deadline_grace_s=0.2))
    t0 = time.monotonic()
    (late,) = d.run_batch([ToolCall("stubborn", "x")])
    assert late.status == "timeout" and time.monotonic() - t0 < 1.5
    d.close()


def test_statistics(dispatcher):
    dispatcher.reset_stats()
    dispatcher.run_batch([dispatcher.parse(t) for t in [
        "<python>print(1)</python>", "<python>1/0</python>", "<python>x=1</python>", "<python></python>"]])
    dispatcher.submit(dispatcher.parse("<python>while True: pass</python>"), timeout_s=0.3).result()
    stats = dispatcher.stats()
    py = stats["python"]
    assert (py["calls"], py["failures"], py["timeouts"], py["no_output"]) == (4, 2, 1, 1)
    assert py["max_latency_s"] >= py["mean_latency_s"] > 0
    assert stats["parse"]["calls"] == 1 and stats["parse"]["failures"] == 1
    assert "python" in dispatcher.describe()


def test_real_search_tool_through_the_dispatcher(search_cache_path, tmp_path):
    cfg = SearchConfig(cache_path=str(search_cache_path), index_dir=str(tmp_path))
    with ToolDispatcher.from_configs(None, cfg) as d:
        (obs,) = d.run_batch([d.parse("<search>Amy Smart film debut Campfire Tales</search>")])
    assert obs.status == "ok" and obs.text.startswith(" <result>\nPage 1: ")


def test_tools_package_does_not_import_jax():
    code = "import sys, arpo_jax.tools; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
