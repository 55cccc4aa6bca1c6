"""Paged vs contiguous KV cache on a fork-heavy decode: one long prompt forked into many slots
that each decode the same number of tokens. Reports peak KV pages / bytes and decode tokens/s
for both layouts (same model, same keys, same tokens), and the host time spent on pages.
Model: the ``bench sampler`` architecture (Qwen2-shaped, 4 layers, hidden 256, 4 heads / 2
kv heads, head dim 64, vocab 512, fp32, random weights). Writes JSON.

    .venv/bin/python bench/paged_fork.py --prompt 1000 --children 16 --new 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def run(layout: str, args, model) -> dict:
    import numpy as np

    from arpo_jax.sampling import RUNNING, Sampler, SamplingConfig

    cfg = SamplingConfig(max_new_tokens=args.new, chunk_size=args.chunk, kv_layout=layout, page_size=args.page_size)
    cap = -(-(args.prompt + args.new + 1) // args.page_size) * args.page_size
    s = Sampler(model, cfg, num_slots=args.children + 1, capacity=cap, seed=0)
    host = {"s": 0.0}
    grow = s._grow

    def timed_grow(*a):  # host time of page allocation, copy-on-write and the table copy
        t = time.perf_counter()
        out = grow(*a)
        host["s"] += time.perf_counter() - t
        return out

    s._grow = timed_grow
    prompt = np.random.default_rng(0).integers(0, 512, args.prompt).tolist()
    children = list(range(1, args.children + 1))
    times, tokens, peak = [], None, 0
    for rep in range(args.repeats + 1):  # the first run compiles
        s.insert([0], [prompt])
        s.fork(0, children, keys=children)
        peak = max(peak, s.num_pages - s.pages_free())  # parent and children all held
        s.release([0])
        host["s"], out, t = 0.0, [], time.perf_counter()
        while (s.status == RUNNING).any():
            r = s.decode_chunk()
            out.append(r.tokens[1:])
            peak = max(peak, s.num_pages - s.pages_free())
        if rep:
            times.append(time.perf_counter() - t)
        tokens = np.concatenate(out, 1)
        s.release(children)
    mc = model.cfg
    token_bytes = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 4  # k and v, fp32
    peak_tokens = peak * s.page_size if layout == "paged" else (args.children + 1) * cap
    dt = statistics.median(times)
    return dict(layout=layout, capacity=cap, page_size=s.page_size, peak_pages=peak, peak_kv_tokens=peak_tokens,
                peak_kv_bytes=peak_tokens * token_bytes, decode_s=dt, decode_tok_s=args.children * args.new / dt,
                host_pages_s=host["s"], times=times, compile_counts=s.compile_counts(),
                tokens_checksum=int(np.asarray(tokens, np.int64).sum()), generated=int((tokens >= 0).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=1000)
    parser.add_argument("--children", type=int, default=16)
    parser.add_argument("--new", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/paged_fork.json")
    args = parser.parse_args()

    from flax import nnx

    from arpo_jax.models.config import ModelConfig
    from arpo_jax.models.transformer import Transformer

    mcfg = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4,
                       num_kv_heads=2, head_dim=64)
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    load = [os.getloadavg()[0]]
    results = [run(layout, args, model) for layout in ("contiguous", "paged")]
    load.append(os.getloadavg()[0])
    same = results[0]["tokens_checksum"] == results[1]["tokens_checksum"]
    report = dict(command="python bench/paged_fork.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                   vars(args).items() if k != "out"),
                  machine="2-core shared CPU, no GPU", load_average_start_end=load, same_tokens=same,
                  results=results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{r['layout']:>10}: peak {r['peak_pages']} pages, {r['peak_kv_bytes'] / 2**20:.1f} MiB KV, "
              f"decode {r['decode_tok_s']:.0f} tok/s (host pages {r['host_pages_s'] * 1e3:.1f} ms)")
    print(f"same tokens: {same}; load average {load}")


if __name__ == "__main__":
    main()
