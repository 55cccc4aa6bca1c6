"""``arpo-jax bench sampler``: arpo_jax's jitted sampler vs transformers ``generate``.

Same random model (transformers init, saved and loaded through ``load_hf``), same prompts,
same run: sampling at temperature 1 (top-k/top-p off), a fixed number of new tokens (no
EOS), tokens/s including prefill for both. transformers runs on torch CPU with
``output_scores=True`` (the per-token scores ARPO's rollout needs); arpo_jax returns
token ids, log-probs and entropies. Also measures compile time, the cost of the in-loop
entropy (a second sampler with ``compute_entropy=False``) and the prefill tokens computed
per forked branch. Writes JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=32, help="decode_chunk length")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = torch default")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--out", default="bench/results/sampler.json")


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _build_models(args):
    """A random Qwen2 in transformers (fp32, eval) and the same weights loaded into arpo_jax."""
    import torch
    import transformers

    from arpo_jax.models.hf_io import load_hf

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(512, args.prompt_len + args.new_tokens), tie_word_embeddings=False)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).to(torch.float32).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model, cfg = load_hf(d)
    return hf, model, cfg


def _header(args, cfg) -> dict:
    import jax
    import torch
    import transformers

    return {
        "command": "arpo-jax bench sampler " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k in ("batch_sizes", "chunk", "repeats")),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "transformers": transformers.__version__},
        "model": {"family": "qwen2", "layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "kv_heads": args.kv_heads, "ffn": args.ffn, "vocab": args.vocab, "params": cfg.num_params()},
        "setting": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "temperature": 1.0,
                    "top_p": 1.0, "top_k": 0, "chunk": args.chunk, "repeats": args.repeats, "dtype": "float32"},
        "batches": {},
    }


def _transformers_rows(args, hf, prompts) -> dict:
    """transformers' sampling speed per batch size (run before any JAX computation: XLA's CPU
    thread pool would otherwise compete with torch's OpenMP threads for the few cores)."""
    import torch

    rows = {}
    for b in args.batch_sizes:
        ids = torch.tensor(prompts[b])
        mask = torch.ones_like(ids)

        def hf_generate(n=args.new_tokens):
            with torch.no_grad():
                g = hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                max_new_tokens=n, min_new_tokens=n, output_scores=True,
                                return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
            assert g.sequences.shape[1] == args.prompt_len + n and len(g.scores) == n

        hf_generate()  # warm-up (a full run: the first ones are much slower)
        t_hf, all_hf = _median_time(hf_generate, args.repeats)
        rows[b] = {"tokens_per_s": b * args.new_tokens / t_hf, "seconds": t_hf, "all_seconds": all_hf,
                   "best_tokens_per_s": b * args.new_tokens / min(all_hf)}
    return rows


def _arpo_row(args, model, scfg, capacity: int, plist: list, hf_row: dict | None) -> dict:
    """arpo_jax's speed for one batch, with and without in-loop entropy (interleaved runs)."""
    from arpo_jax.sampling.sampler import Sampler

    b, samplers = len(plist), {}
    total_new = b * args.new_tokens
    for ent in (True, False):
        s = Sampler(model, scfg.replace(compute_entropy=ent), num_slots=b, capacity=capacity, seed=1)
        t0 = time.perf_counter()
        out = s.generate(plist)  # compiles insert, decode_chunk (one per attention window), release
        first = time.perf_counter() - t0
        assert all(len(o["tokens"]) == args.new_tokens for o in out)
        samplers[ent] = (s, first)
    times = {True: [], False: []}  # interleaved so that machine load affects both alike
    for _ in range(args.repeats):
        for ent, (s, _) in samplers.items():
            t0 = time.perf_counter()
            s.generate(plist)
            times[ent].append(time.perf_counter() - t0)
    t_on, t_off = statistics.median(times[True]), statistics.median(times[False])
    s, first = samplers[True]
    row = {"arpo_jax": {"tokens_per_s": total_new / t_on, "seconds": t_on, "all_seconds": times[True],
                        "best_tokens_per_s": total_new / min(times[True]),
                        "first_call_seconds": first, "compile_seconds": max(first - t_on, 0.0),
                        "compilations": s.compile_counts(), "decode_steps_per_run": args.new_tokens},
           "arpo_jax_no_entropy": {"tokens_per_s": total_new / t_off, "seconds": t_off, "all_seconds": times[False],
                                   "best_tokens_per_s": total_new / min(times[False])},
           "entropy_overhead": t_on / t_off - 1.0,
           "entropy_overhead_best": min(times[True]) / min(times[False]) - 1.0}
    if hf_row is not None:
        row["transformers"] = hf_row
        row["speedup_vs_transformers"] = hf_row["seconds"] / t_on
        row["speedup_vs_transformers_best"] = min(hf_row["all_seconds"]) / min(times[True])
    return row


def _fork_stats(args, model, scfg, capacity: int, rng) -> dict:
    """Fork: branches start from the parent's state; the prefill work they cost and the call's time."""
    import jax

    from arpo_jax.sampling.sampler import Sampler

    s = Sampler(model, scfg.replace(max_new_tokens=1 << 20), num_slots=8, capacity=capacity, seed=2)
    s.insert([0], [rng.integers(0, args.vocab, args.prompt_len).tolist()])
    s.decode_chunk()
    before = s.stats["prefill_tokens_padded"]
    t0 = time.perf_counter()
    s.fork(0, list(range(1, 8)))
    jax.block_until_ready(s.state)
    fork_first = time.perf_counter() - t0
    s.release(list(range(1, 8)))
    t0 = time.perf_counter()
    s.fork(0, list(range(1, 8)))
    jax.block_until_ready(s.state)
    fork_s = time.perf_counter() - t0
    res = s.decode_chunk()
    return {"branches": 7, "parent_context_tokens": int(s.lengths[0]) - int(res.num_new[0]) + 1,
            "prefill_tokens_per_branch": (s.stats["prefill_tokens_padded"] - before) / 7,
            "fork_call_seconds_steady": fork_s, "fork_call_seconds_first": fork_first,
            "branches_decoded_after_fork": int((res.num_new[1:8] > 0).sum())}


def run(args) -> dict:
    """The sampler benchmark: arpo_jax vs transformers per batch size, entropy overhead, fork cost."""
    import numpy as np
    import torch

    from arpo_jax.sampling.config import SamplingConfig

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    hf, model, cfg = _build_models(args)
    capacity = args.prompt_len + args.new_tokens
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    t_start = time.time()
    result = _header(args, cfg)
    scfg = SamplingConfig(temperature=1.0, max_new_tokens=args.new_tokens, chunk_size=args.chunk)
    prompts = {b: rng.integers(0, args.vocab, (b, args.prompt_len)) for b in args.batch_sizes}
    hf_rows = {} if args.skip_transformers else _transformers_rows(args, hf, prompts)
    for b in args.batch_sizes:
        result["batches"][str(b)] = _arpo_row(args, model, scfg, capacity, prompts[b].tolist(), hf_rows.get(b))
    result["fork"] = _fork_stats(args, model, scfg, capacity, rng)
    result["loadavg_before"] = load0
    result["loadavg_after"] = os.getloadavg()
    result["wall_seconds"] = time.time() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    result["written_to"] = str(out)
    return result
