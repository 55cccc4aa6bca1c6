"""``arpo-jax bench rollout``: the agent loop on the contiguous and the paged KV layout, same run.

Workload: ARPO-shaped (``arpo_release``, M 16, N 8, Z 1, real sandboxed Python tool calls) on
the scripted stochastic model of ``arpo_jax.apps.scripted_agent`` (a bigram transformer that
writes ``<python>print(6*7)</python>`` calls). Its responses follow the scripted transition
table; ``--max-response`` sets the budget (the cap a contiguous row must hold) so that
responses end far below the cap (the default 160 puts the scripted mean at ~1/10 of it).

Per layout: prompt prefill tokens per prompt (÷ prompt length; target 1.0), peak KV bytes
(contiguous: the slots' rows, allocated whole; paged: peak pages in use × page bytes) and KV
bytes per trajectory in flight at that peak, branches granted / made / returned / dropped,
decode tokens/s and where the time goes (decode, tool waits, the rest = host bookkeeping).
The paged layout runs twice: memory for every prompt × M at full length, and 1/8 of it. All
runs use the same seed and must give the same trajectories (checked). Writes JSON.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--total-rollouts", type=int, default=16, help="M")
    parser.add_argument("--initial-rollouts", type=int, default=8, help="N")
    parser.add_argument("--max-response", type=int, default=160)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="bench/results/rollout.json")


def _scripted():
    from arpo_jax.apps.scripted_agent import build_model, build_tokenizer

    tok = build_tokenizer()
    prompt = tok.encode("hmmoksoabcdQ", add_special_tokens=False)  # 8 word tokens ending in the question mark "Q"
    return tok, build_model(tok)[0], prompt


def _layout_result(engine, res, m, prompt_len: int, num_prompts: int, wall: float) -> dict:
    """One layout's numbers (``m``: the model config)."""
    from arpo_jax.sampling.pages import pages_for

    s, cfg, sampler = res.stats, engine.cfg, engine.sampler
    token_bytes = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 4  # k and v, fp32
    executed = sum(c.end - c.start for t in res.trajectories for c in t.tool_calls if c.start >= t.branch_pos)
    prompt_prefill = (s["rollout/sampler/prefill_tokens"] - executed) / num_prompts
    if cfg.kv_layout == "paged":
        peak = sampler.alloc.peak_used * sampler.page_size * token_bytes
        pool = sampler.num_pages * sampler.page_size * token_bytes
    else:
        peak = pool = engine.num_slots * sampler.capacity * token_bytes
    in_flight = s["rollout/peak_trajectories_in_flight"]
    gen, total = s.get("rollout/time/generate_s", 0.0), s["rollout/time/total_s"]
    return dict(
        kv_layout=cfg.kv_layout, num_slots=engine.num_slots, kv_pages=getattr(sampler, "num_pages", None),
        kv_pool_bytes=pool, peak_kv_bytes=peak, peak_trajectories_in_flight=in_flight,
        kv_bytes_per_trajectory_in_flight=peak / max(in_flight, 1),
        prompt_prefill_tokens_per_prompt=prompt_prefill, prompt_prefill_per_prompt_length=prompt_prefill / (
            prompt_len - 1) if prompt_len > 1 else None, prompt_pages=pages_for(prompt_len, cfg.page_size),
        branches={k: s[f"rollout/branches_{k}"] for k in ("granted", "made", "returned", "dropped")},
        evictions=s["rollout/evictions"], paused_prompt_rounds=s["rollout/paused_prompt_rounds"],
        generated_tokens=s["rollout/generated_tokens"], decode_tokens_per_s=s.get("rollout/tokens_per_s"),
        mean_response_tokens=s["rollout/response_length"], response_cap=cfg.max_response_tokens,
        time_s=dict(total=total, decode=gen, tools_wait=s["rollout/time/tools_wait_s"],
                    host_bookkeeping=total - gen - s["rollout/time/tools_wait_s"], wall_incl_compile=wall),
        decode_chunks=s["rollout/sampler/chunks"])


def run(args) -> dict:
    """Runs the workload on each layout (a warm-up run first, untimed); returns the JSON dict."""
    import jax

    from arpo_jax.rollout import RolloutConfig, RolloutEngine
    from arpo_jax.rollout.scheduler import worst_case_pages
    from arpo_jax.tools import PythonToolConfig, ToolDispatcher

    tok, model, prompt = _scripted()
    prompts = [prompt] * args.prompts
    base = dict(policy="arpo_release", total_rollouts=args.total_rollouts, initial_rollouts=args.initial_rollouts,
                max_response_tokens=args.max_response, max_prompt_tokens=8, chunk_size=args.chunk, max_tool_calls=3,
                page_size=args.page_size)
    full = args.prompts * worst_case_pages(8, args.max_response, args.total_rollouts, args.page_size, args.chunk)
    layouts = {"contiguous": dict(kv_layout="contiguous"), "paged": dict(kv_layout="paged"),
               "paged_1/8": dict(kv_layout="paged", kv_pages=full // 8)}
    out = {"command": "arpo-jax bench rollout " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                          if k not in ("func", "command", "bench_name", "out")),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                       "backend": jax.default_backend(), "load_average_start": os.getloadavg()},
           "workload": dict(base, prompts=args.prompts, seed=args.seed, prompt_tokens=len(prompt)),
           "layouts": {}}
    trees = {}
    with ToolDispatcher.from_configs(python=PythonToolConfig(timeout_s=30)) as disp:
        for name, kw in layouts.items():
            engine = RolloutEngine(model, tok, disp, RolloutConfig(**base, **kw), num_prompts=args.prompts, seed=0)
            t0 = time.perf_counter()
            engine.run(prompts, seed=args.seed + 1)  # warm-up: compiles the buckets this workload uses
            wall = time.perf_counter() - t0
            res = engine.run(prompts, seed=args.seed)
            out["layouts"][name] = _layout_result(engine, res, model.cfg, len(prompt), args.prompts, wall)
            trees[name] = [(t.prompt_index, t.parent, t.branch_pos, t.tokens) for t in res.trajectories]
    out["same_trajectories_all_layouts"] = all(v == trees["contiguous"] for v in trees.values())
    c, p = out["layouts"]["contiguous"], out["layouts"]["paged"]
    out["paged_vs_contiguous"] = dict(
        kv_bytes_per_trajectory_ratio=p["kv_bytes_per_trajectory_in_flight"] / c["kv_bytes_per_trajectory_in_flight"],
        decode_tokens_per_s_ratio=(p["decode_tokens_per_s"] or 0) / (c["decode_tokens_per_s"] or 1))
    out["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out
