"""A quick behaviour probe of a demo checkpoint: greedy agent loop with the real tools.

``probe_checkpoint`` loads an HF checkpoint, renders each held-out prompt with the chat
template, generates with the ``Sampler`` until ``</python>`` / ``</search>`` / EOS, runs the
call with a ``ToolDispatcher``, appends the tokenized observation and continues (re-prefilling
the grown sequence, which is simple and exact for greedy decoding), then scores the
trajectory with the project's rewards. It reports the share of first segments that are a
well-formed call of the tool the task needs, and accuracy per kind. It is a development aid
for sizing the demo, not the evaluator (``arpo-jax eval``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

EXPECTED_FIRST_TOOL = {"arith": "python", "fact": "search", "multihop": "search"}


def _read_prompts(files):
    rows = []
    for f in files:
        rows += [json.loads(line) for line in Path(f).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def probe_checkpoint(ckpt: str, prompt_files, search_cfg, *, max_calls: int = 4, max_response_tokens: int = 192,
                     num_slots: int = 32, limit: int | None = None, reward_name: str = "qa_em") -> dict:
    """Greedy agent loop over the prompts of ``prompt_files``; returns rates and a few samples.

    Args:
        ckpt: HF checkpoint directory (with its tokenizer, as ``arpo-jax sft`` exports it).
        prompt_files: demo prompt JSONL files (``prompts/heldout/*.jsonl``).
        search_cfg: the demo's ``SearchConfig`` (``arpo_jax.demo.data.search_config``).
        max_calls: tool calls allowed per trajectory (a further call ends it).
        max_response_tokens: tokens per trajectory, tool results included.
        limit: probe only the first ``limit`` prompts.
        reward_name: reward used for accuracy (``qa_em``, ``math``, ``qa_f1``, ``arpo_f1``).
    """
    from transformers import AutoTokenizer

    from arpo_jax.demo.tasks import prompt_messages
    from arpo_jax.demo.tokenizer import eos_ids
    from arpo_jax.models import load_hf
    from arpo_jax.rewards import RewardConfig, get_reward_fn
    from arpo_jax.sampling import Sampler, SamplingConfig
    from arpo_jax.tools import PythonToolConfig, ToolCall, ToolDispatcher

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(ckpt)
    model, _ = load_hf(ckpt)
    rows = _read_prompts(prompt_files)[:limit]
    stops = ("</python>", "</search>")
    prompt_ids = [tok(tok.apply_chat_template(prompt_messages(r["question"]), tokenize=False,
                                              add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                  for r in rows]
    capacity = max(len(p) for p in prompt_ids) + max_response_tokens + 8
    capacity = -(-capacity // 64) * 64
    cfg = SamplingConfig(greedy=True, stop_strings=stops, eos_ids=eos_ids(tok), max_new_tokens=max_response_tokens,
                         vocab_size=len(tok), chunk_size=32)
    sampler = Sampler(model, cfg, num_slots=num_slots, capacity=capacity, tokenizer=tok)
    seqs = [list(p) for p in prompt_ids]
    texts = [""] * len(rows)
    first_call = [None] * len(rows)
    calls = [0] * len(rows)
    active = list(range(len(rows)))
    with ToolDispatcher.from_configs(PythonToolConfig(), search_cfg) as disp:
        while active:
            budgets = [max_response_tokens - (len(seqs[i]) - len(prompt_ids[i])) for i in active]
            outs = sampler.generate([seqs[i] for i in active], budgets=budgets)
            pending = []
            for i, out in zip(active, outs):
                new = [int(t) for t in out["tokens"]]
                seqs[i] += new
                seg = tok.decode(new, skip_special_tokens=True)
                texts[i] += seg
                hit = out["stop_index"] >= 0
                call = disp.parse(seg, stops[out["stop_index"]]) if hit else None
                if first_call[i] is None:
                    first_call[i] = call.tool if isinstance(call, ToolCall) else "malformed" if call else "none"
                if hit and calls[i] < max_calls and len(seqs[i]) - len(prompt_ids[i]) < max_response_tokens:
                    pending.append((i, call))
            obs = disp.run_batch([c for _, c in pending])
            active = []
            for (i, _), o in zip(pending, obs):
                calls[i] += 1
                ids = tok(o.text, add_special_tokens=False)["input_ids"]
                if len(seqs[i]) + len(ids) - len(prompt_ids[i]) >= max_response_tokens:
                    continue
                seqs[i] += ids
                texts[i] += o.text
                active.append(i)
    reward = get_reward_fn(reward_name)
    per_kind = defaultdict(lambda: defaultdict(float))
    samples = {}
    for r, text, fc, n in zip(rows, texts, first_call, calls):
        res = reward(text, r["answer"], RewardConfig())
        k = per_kind[r["kind"]]
        k["n"] += 1
        k["correct"] += float(bool(res.correct))
        k["format_ok"] += float(res.format_ok)
        k["first_call_ok"] += float(fc == EXPECTED_FIRST_TOOL[r["kind"]])
        k["first_call_any"] += float(fc in ("python", "search"))
        k["calls"] += n
        samples.setdefault(r["kind"], []).append(text) if len(samples.get(r["kind"], [])) < 3 else None
    report = {"kinds": {}, "seconds": round(time.perf_counter() - t0, 1), "samples": samples}
    tot = defaultdict(float)
    for kind, k in sorted(per_kind.items()):
        n = k.pop("n")
        report["kinds"][kind] = {"n": int(n), **{key: round(v / n, 3) for key, v in k.items()}}
        tot["n"] += n
        for key, v in k.items():
            tot[key] += v
    n = tot.pop("n")
    report["all"] = {"n": int(n), **{key: round(v / n, 3) for key, v in tot.items()}}
    return report


def main(argv=None):
    """``python -m arpo_jax.demo.probe CKPT DATA_DIR [limit]``: prints the probe report (JSON)."""
    import sys

    from arpo_jax.demo.data import search_config

    args = argv if argv is not None else sys.argv[1:]
    manifest = json.loads((Path(args[1]) / "manifest.json").read_text())
    limit = int(args[2]) if len(args) > 2 else None
    print(json.dumps(probe_checkpoint(args[0], manifest["heldout_prompts"], search_config(manifest), limit=limit),
                     indent=1, default=float))


if __name__ == "__main__":
    np.set_printoptions(linewidth=200)
    main()
