"""Attention cores: forward+backward time and compiled temporary memory, reference vs blockwise.

    python bench/attention_bench.py [--lengths 512 1024 2048 4096] [--repeats 3]

For each length T: one row, N=4 query heads over K=2 kv heads of H=64, fp32, under two masks —
causal, and a rollout tree (a prompt of T/8 tokens, then 7 sibling branches that each see the
prompt and themselves only). Times ``jax.jit(jax.grad(sum(out**2)))`` w.r.t. q, k, v (median
of ``--repeats`` after a warm-up call) and reads ``memory_analysis().temp_size_in_bytes`` of the
compiled function. Writes bench/results/attention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from arpo_jax.models.attention import interval_mask, reference_attention
from arpo_jax.models.attention_blockwise import DEFAULT_BLOCK, blockwise_attention

N, K, H = 4, 2, 64


def tree_key_end(t: int, branches: int = 7) -> np.ndarray:
    """[1, T]: a prompt of T/8 tokens seen by everything after it, then ``branches`` siblings."""
    prompt = t // 8
    key_end = np.full(t, t, np.int32)
    edges = np.linspace(prompt, t, branches + 1).astype(int)
    for start, end in zip(edges[:-1], edges[1:]):
        key_end[start:end] = end
    return key_end[None]


def measure(attn, t: int, key_end: np.ndarray, repeats: int) -> dict:
    """Median seconds of one forward+backward and the compiled temp bytes."""
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (1, t, N, H), jnp.float32)
    k, v = (jax.random.normal(r, (1, t, K, H), jnp.float32) for r in keys[1:])
    ke = jnp.asarray(key_end)
    loss = lambda q, k, v, ke: jnp.sum(attn(q, k, v, ke) ** 2)  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v, ke).compile()
    jax.block_until_ready(compiled(q, k, v, ke))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, ke))
        times.append(time.perf_counter() - start)
    return {"fwd_bwd_s": round(statistics.median(times), 4),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/attention.json")
    args = parser.parse_args()
    impls = {"reference": lambda q, k, v, ke: reference_attention(q, k, v, interval_mask(ke)),
             "blockwise": blockwise_attention}
    rows, load_start = [], [round(x, 2) for x in os.getloadavg()]
    for t in args.lengths:
        for mask, key_end in (("causal", np.full((1, t), t, np.int32)), ("tree", tree_key_end(t))):
            for name, attn in impls.items():
                row = {"T": t, "mask": mask, "impl": name, **measure(attn, t, key_end, args.repeats)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"machine": f"{platform.machine()} {os.cpu_count()}-core CPU, no GPU", "backend": jax.default_backend(),
              "jax": jax.__version__,
              "load_avg_1_5_15": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
              "shape": {"B": 1, "N": N, "K": K, "H": H, "dtype": "float32"},
              "block_q": DEFAULT_BLOCK, "block_k": DEFAULT_BLOCK, "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
