"""Where a decode step's time goes: profiles arpo_jax's sampler on the ``arpo-jax bench
sampler`` model (random Qwen2 architecture, 4 layers, hidden 256, vocab 512, fp32, 32-token
prompts, 128 new tokens) and sums XLA CPU op time by op kind (fusion names without their
numeric suffix) over all XLA threads. Writes JSON.

    .venv/bin/python bench/sampler_profile.py --batch 64
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="default bench/results/sampler_profile_b{batch}.json")
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    import transformers
    from jax.profiler import ProfileData

    from arpo_jax.models.hf_io import load_hf
    from arpo_jax.sampling.config import SamplingConfig
    from arpo_jax.sampling.sampler import Sampler

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      tie_word_embeddings=False)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).to(torch.float32).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model, _ = load_hf(d)
    new_tokens, b = 128, args.batch
    sampler = Sampler(model, SamplingConfig(temperature=1.0, max_new_tokens=new_tokens, chunk_size=32),
                      num_slots=b, capacity=32 + new_tokens, seed=1)
    prompts = np.random.default_rng(0).integers(0, 512, (b, 32)).tolist()
    sampler.generate(prompts)  # compile
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sampler.generate(prompts)
        times.append(time.perf_counter() - t0)
    step_ms = statistics.median(times) / new_tokens * 1e3

    runs = 2
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(runs):
                sampler.generate(prompts)
        (trace,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        profile = ProfileData.from_file(trace)
        by_kind: collections.Counter = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLAEigen"):  # XLA's CPU worker threads
                    continue
                for event in line.events:
                    if not event.name.startswith("ThunkExecutor"):  # per-op events only
                        by_kind[re.sub(r"\.\d+$", "", event.name)] += event.duration_ns
    steps = runs * new_tokens
    per_step = {k: v / 1e6 / steps for k, v in by_kind.most_common()}
    result = {"batch": b, "wall_ms_per_step": step_ms, "tokens_per_s": b / step_ms * 1e3,
              "op_ms_per_step_total": sum(per_step.values()),
              "op_ms_per_step_by_kind": {k: round(v, 4) for k, v in per_step.items() if v >= 0.005},
              "jax": jax.__version__, "note": "op time is summed over XLA's CPU threads (can exceed wall time)"}
    out = Path(args.out or f"bench/results/sampler_profile_b{b}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("batch", "wall_ms_per_step", "op_ms_per_step_total")}),
          {k: round(v, 2) for k, v in list(per_step.items())[:6]}, f"-> {out}")


if __name__ == "__main__":
    main()
