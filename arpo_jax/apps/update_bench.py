"""``arpo-jax bench update``: today's update (one padded row per trajectory) vs tree-packed rows.

The same ARPO-shaped rollout trees in the same run, on a random model of the demo's shape:
``--prompts`` prompts × M = ``--m`` trajectories, ``--roots`` global samples per prompt and the
rest forked from an earlier trajectory of the prompt at a random response position (as the
rollout's ``Trajectory.branch``), prompts of ``--prompt-len`` tokens, responses of up to
``--response-len``. Reports, per variant: tokens computed per step (the rows × length the
model runs over) against Σ trajectory lengths and the trees' unique tokens, update seconds per
step (median), the compiled step's peak temporary memory (``memory_analysis``) and the loss (the
variants must agree). ``--padded-impls`` / ``--packed-impls`` name the ``attention_impl`` each
variant runs with (``reference``: dense [T, T] scores; ``blockwise``: flash-style, no [T, T]
buffer, dead blocks skipped). Writes JSON.

Paper-shaped trees (M 16, N 8, ~700-token prompts) on this CPU: ``--prompts 2 --m 16 --roots 8
--prompt-len 700 --response-len 256 --padded-impls blockwise --packed-impls blockwise`` (fewer
prompts and shorter responses than the paper's 1–4k, the demo's model shape).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--m", type=int, default=4, help="trajectories per prompt")
    parser.add_argument("--roots", type=int, default=2, help="global samples per prompt (the rest are forks)")
    parser.add_argument("--prompt-len", type=int, default=1400)
    parser.add_argument("--response-len", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=0, help="trajectories per micro-batch (0 = all)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--ffn", type=int, default=384)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median)")
    parser.add_argument("--attention-block", type=int, default=0,
                        help="blockwise query / key block size (0: the model config's default, 512)")
    parser.add_argument("--padded-impls", default="reference",
                        help="attention_impl values today's padded update runs with (comma-separated)")
    parser.add_argument("--packed-impls", default="reference,blockwise",
                        help="attention_impl values the packed update runs with (comma-separated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/update.json")


def arpo_trajectories(args, rng: np.random.Generator):
    """ARPO-shaped trees as the rollout's ``Trajectory`` objects (random ids and log-probs)."""
    from arpo_jax.rollout.trajectory import Trajectory

    trajs = []
    for g in range(args.prompts):
        prompt = rng.integers(0, args.vocab, args.prompt_len).tolist()
        base = len(trajs)
        for j in range(args.m):
            n = int(rng.integers(args.response_len // 2, args.response_len + 1))
            if j < args.roots:
                t = Trajectory(prompt_index=g, uid=len(trajs), prompt_tokens=prompt)
            else:  # a fork of an earlier trajectory, at most its length, within the budget
                par = trajs[base + int(rng.integers(0, j))]
                t = par.branch(len(trajs), int(rng.integers(1, len(par.tokens))))
            own = max(n - len(t.tokens), 1)
            t.add_model_tokens(rng.integers(0, args.vocab, own), -rng.uniform(0.1, 3, own), rng.uniform(0, 2, own))
            trajs.append(t)
    return trajs


def _model(args, impl: str | None):
    from flax import nnx

    from arpo_jax.models import ModelConfig, create_model

    cfg = ModelConfig(family="qwen2", vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                      head_dim=args.hidden // args.heads, tie_word_embeddings=True)
    if impl is not None:
        cfg = dataclasses.replace(cfg, attention_impl=impl)
    if args.attention_block:
        cfg = dataclasses.replace(cfg, attention_block_q=args.attention_block, attention_block_k=args.attention_block)
    return nnx.split(create_model(cfg, seed=args.seed))


def _measure(args, updater, params, batch, repeats: int) -> dict:
    """Compile (memory analysis), then time ``repeats`` steps of ``updater.apply``."""
    import jax

    from arpo_jax.training.update import update

    opt_state = updater.init(params)
    t0 = time.perf_counter()
    compiled = update.lower(params, opt_state, batch, None, graphdef=updater.graphdef, optimizer=updater.optimizer,
                            loss_cfg=updater.loss_cfg, temperature=updater.temperature, num_micro=updater.num_micro,
                            vocab_size=updater.vocab_size, logits_chunk=updater.logits_chunk).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    times, cpu, loss = [], [], None
    for _ in range(repeats + 1):  # the first (warm-up) run is not timed
        t0, c0 = time.perf_counter(), time.process_time()
        params, opt_state, m = updater.apply(params, opt_state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # all threads' CPU seconds: less sensitive to other jobs' load
        loss = float(m["loss"]) if loss is None else loss
    return {"update_s_per_step": statistics.median(times[1:]), "update_s_all": times[1:],
            "update_cpu_s_per_step": statistics.median(cpu[1:]), "compile_s": compile_s,
            "peak_temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)), "loss_first_step": loss}


def _variants(args, trajs) -> tuple[list[dict], int, object]:
    """(the padded and packed batches of ``trajs`` and what each computes, micro-batches, the
    ``TrajectoryBatch``)."""
    from arpo_jax.training.rl_batch import TrajectoryBatch, pack_layout, packed_arrays, policy_arrays
    from arpo_jax.training.update import make_packed_policy_batch, make_policy_batch

    rng = np.random.default_rng(args.seed + 1)
    batch = TrajectoryBatch.from_trajectories(trajs)
    adv = rng.normal(size=batch.mask.shape).astype(np.float32) * batch.mask
    weights = batch.mask.astype(np.float32)
    micro = args.micro_batch_size or len(trajs)
    num_micro = len(trajs) // micro
    t0 = time.perf_counter()
    padded = policy_arrays(batch, adv, weights, 0)
    t_padded = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = packed_arrays(batch, adv, weights, pack_layout(batch, num_micro))
    t_packed = time.perf_counter() - t0
    return [dict(name="padded", batch=make_policy_batch(**padded), slots=int(padded["tokens"].size),
                 real=int(batch.seq_lengths.sum()), shape=list(padded["tokens"].shape), host_s=t_padded),
            dict(name="packed", batch=make_packed_policy_batch(**packed), slots=int(packed["tokens"].size),
                 real=int((packed["key_end"] > 0).sum()), shape=list(packed["tokens"].shape), host_s=t_packed)
            ], num_micro, batch


def _runs(args) -> list[tuple[str, str]]:
    """(attention_impl, variant) pairs to measure, ``--padded-impls`` and ``--packed-impls``,
    grouped by attention_impl (one model each)."""
    want = {v: [x for x in getattr(args, f"{v}_impls").split(",") if x] for v in ("padded", "packed")}
    impls = list(dict.fromkeys(want["padded"] + want["packed"]))
    return [(impl, v) for impl in impls for v in ("padded", "packed") if impl in want[v]]


def run(args) -> dict:
    """Runs the benchmark described in the module docstring; writes ``args.out``."""
    import jax

    from arpo_jax.training.update import OptimizerConfig, PolicyUpdater, cached_optimizer

    load_start = list(os.getloadavg())
    trajs = arpo_trajectories(args, np.random.default_rng(args.seed))
    variants, num_micro, batch = _variants(args, trajs)
    total, unique = int(batch.seq_lengths.sum()), int(batch.forest.tree_sizes().sum())
    results, by_name = [], {v["name"]: v for v in variants}
    for impl, name in _runs(args):
        graphdef, params = _model(args, impl)
        updater = PolicyUpdater(graphdef, cached_optimizer(OptimizerConfig(lr=1e-6)), num_micro=num_micro,
                                vocab_size=args.vocab)
        v = by_name[name]
        r = dict(variant=name, attention_impl=impl, shape=v["shape"], tokens_computed=v["slots"],
                 real_tokens=v["real"], tokens_computed_over_sum_lengths=v["slots"] / total,
                 tokens_computed_over_unique=v["slots"] / unique, host_build_s=v["host_s"])
        r.update(_measure(args, updater, params, v["batch"], args.repeats))
        results.append(r)
        print(json.dumps(r), flush=True)
    padded = [r for r in results if r["variant"] == "padded"]
    base = padded[0] if padded else results[0]  # today's update (the first padded run)
    for r in results:
        r["speedup_vs_padded"] = base["update_s_per_step"] / r["update_s_per_step"]
        r["cpu_speedup_vs_padded"] = base["update_cpu_s_per_step"] / r["update_cpu_s_per_step"]
        r["loss_diff_vs_padded"] = abs(r["loss_first_step"] - base["loss_first_step"])
    out = {"command": "arpo-jax bench update " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                          if k not in ("func", "command", "bench_name")),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                       "backend": jax.default_backend(), "load_average_start": load_start,
                       "load_average": list(os.getloadavg())},
           "workload": {"prompts": args.prompts, "m": args.m, "trajectories": len(trajs), "num_micro": num_micro,
                        "sum_trajectory_tokens": total, "unique_tokens": unique, "unique_ratio": unique / total},
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out
