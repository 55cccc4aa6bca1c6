"""Benchmark of the tool layer (not a test): concurrency of sandboxed Python calls and
sandbox start-up overhead, plus search latency when ../shared is present.

    .venv/bin/python bench/tools_bench.py --out bench/results/tools.json

Target (issue): 64 Python calls of 0.2 s each finish in under 2 s of wall time on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arpo_jax.tools import (  # noqa: E402
    DispatcherConfig,
    PythonTool,
    PythonToolConfig,
    SearchConfig,
    SearchTool,
    ToolCall,
    ToolDispatcher,
)


def _bare_python_s(n: int, flags: str) -> float:
    """Median wall time of an unsandboxed ``python <flags> -c pass``."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, flags, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _startup(tool: PythonTool, n: int) -> dict:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = tool.run("pass")
        times.append(time.perf_counter() - t0)
        assert out.status == "no_output", out.content
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times)}


def _concurrent(tool: PythonTool, calls: int, sleep_s: float, rounds: int) -> dict:
    walls = []
    with ToolDispatcher({"python": tool}, DispatcherConfig(max_workers=calls)) as d:
        batch = [ToolCall("python", f"import time\ntime.sleep({sleep_s})\nprint({i})") for i in range(calls)]
        d.run_batch(batch[:4])  # warm-up
        for _ in range(rounds):
            t0 = time.perf_counter()
            obs = d.run_batch(batch)
            walls.append(time.perf_counter() - t0)
            assert [o.content for o in obs] == [str(i) for i in range(calls)], [o.content for o in obs][:3]
    return {"calls": calls, "sleep_s": sleep_s, "wall_s": walls, "best_s": min(walls),
            "median_s": statistics.median(walls), "serial_lower_bound_s": calls * sleep_s}


def _search(cache_path: Path, index_dir: str) -> dict:
    tool = SearchTool(SearchConfig(cache_path=str(cache_path), index_dir=index_dir))
    queries = list(json.loads(cache_path.read_text(encoding="utf-8")))[:200]
    t0 = time.perf_counter()
    tool.run("warm up the bm25 index")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries:
        tool.run(q)
    exact_ms = (time.perf_counter() - t0) / len(queries) * 1e3
    para = [f"tell me about {q.removeprefix('search query: ')[:60]} please" for q in queries[:100]]
    t0 = time.perf_counter()
    for q in para:
        tool.run(q)
    bm25_ms = (time.perf_counter() - t0) / len(para) * 1e3
    return {"index_load_or_build_s": build_s, "cache_exact_ms_per_query": exact_ms, "bm25_ms_per_query": bm25_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "tools.json"))
    ap.add_argument("--calls", type=int, default=64)
    ap.add_argument("--sleep", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--startup-calls", type=int, default=30)
    ap.add_argument("--modes", default="bwrap,rlimit")
    args = ap.parse_args()

    result = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "kernel": platform.release(),
                          "python": platform.python_version(), "euid": os.geteuid()},
              # -I: a plain `python -c` start (with site); -IS: the floor the sandbox starts from
              "bare_python_I_s": _bare_python_s(args.startup_calls, "-I"),
              "bare_python_IS_s": _bare_python_s(args.startup_calls, "-IS"), "modes": {}}
    for mode in args.modes.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                tool = PythonTool(PythonToolConfig(sandbox=mode, timeout_s=30))
            except RuntimeError as exc:
                result["modes"][mode] = {"skipped": str(exc)}
                continue
        tool.run("pass")
        startup = _startup(tool, args.startup_calls)
        startup["sandbox_overhead_s"] = startup["median_s"] - result["bare_python_IS_s"]
        result["modes"][mode] = {"startup": startup,
                                 "concurrent": _concurrent(tool, args.calls, args.sleep, args.rounds),
                                 "describe": tool.describe()}
    cache = REPO.parent / "shared" / "data" / "arpo" / "search_cache.json"
    if cache.is_file():
        import tempfile

        with tempfile.TemporaryDirectory() as idx:
            result["search"] = _search(cache, idx)
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
