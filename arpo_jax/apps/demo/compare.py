"""``arpo-jax demo --compare --methods grpo,arpo --seeds S``: RL methods (``methods.methods``:
GRPO, ARPO, AEPO, Tree-GRPO) at the same budget M, from the same SFT checkpoint, S seeds each; a
Markdown table of held-out accuracy (mean ± std over seeds, per task set, gain over SFT), tool
calls per trajectory during training, total tool calls executed and the RL phase's wall time."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from arpo_jax.apps.demo import run as demo
from arpo_jax.apps.demo.methods import method as demo_method


def _mean_std(xs, digits: int = 3) -> str:
    xs = np.asarray(xs, float)
    std = xs.std(ddof=1) if len(xs) > 1 else 0.0
    return f"{xs.mean():.{digits}f} ± {std:.{digits}f}"


START, END = "<!-- compare:start -->", "<!-- compare:end -->"


def write_section(path: Path, md: str) -> None:
    """Puts ``md`` between the compare markers of ``path`` (appended when absent), leaving the
    rest of the file (e.g. the default demo's measured run) as it is."""
    block = f"{START}\n{md.rstrip()}\n{END}\n"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + block + old[old.index(END) + len(END):].lstrip("\n")
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


def run_compare(out: Path, *, seeds: int = 3, quick: bool = False, results_md: str | None = "docs/results.md",
                methods: tuple[str, ...] = ("grpo", "arpo"), sft_model: str | None = None) -> dict:
    """Runs data + SFT once, then RL + held-out eval of each method for each seed. ``sft_model``:
    the SFT export of a demo run with seed 0 (the same data and SFT), used instead of training it
    again."""
    from arpo_jax.apps.demo.data import prepare_demo_data
    from arpo_jax.eval.runner import EvalConfig, run_eval
    from arpo_jax.training.rl import run_train
    from arpo_jax.training.rl_config import RLConfig
    from arpo_jax.training.sft import run_sft
    from arpo_jax.training.sft_config import SFTConfig

    size = demo.SIZES["quick" if quick else "default"]
    labels = {m: demo_method(m, size.total_rollouts, size.initial_rollouts).label for m in methods}  # checks names
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = prepare_demo_data(out / "data", seed=0, quick=quick, n_train=size.n_train, n_heldout=size.n_heldout)
    reused = sft_model is not None
    if sft_model is None:
        sft = run_sft(demo._load(SFTConfig, demo._write(out / "configs" / "sft.yaml",
                                                        demo.sft_config(paths, out, size, 0))))
        sft_model = sft["exported"][-1]
    base = run_eval(demo._load(EvalConfig, demo._write(out / "configs" / "eval_sft.yaml",
                                                       demo.eval_config(paths, sft_model, out / "eval_sft", size))))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in range(seeds):
        for policy in methods:
            run_dir = out / f"{policy}_seed{seed}"
            print(f"[compare] {policy} seed {seed}", file=sys.stderr, flush=True)
            t = time.perf_counter()
            rl = run_train(demo._load(RLConfig, demo._write(out / "configs" / f"{policy}_seed{seed}.yaml",
                                                            demo.rl_config(paths, sft_model, run_dir, size, policy,
                                                                           seed))))
            wall = time.perf_counter() - t
            rep = run_eval(demo._load(EvalConfig, demo._write(
                out / "configs" / f"eval_{policy}_seed{seed}.yaml",
                demo.eval_config(paths, rl["exported"][-1], run_dir / "eval", size))))
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
            acc, per, calls = demo.accuracy(rep)
            results[policy].append({
                "seed": seed, "accuracy": acc, "per_set": per, "eval_tool_calls_per_question": calls,
                "train_tool_calls_per_traj": float(np.mean([r["rollout/tool_calls_per_traj"] for r in rows])),
                "train_tool_calls_total": int(sum(r["rollout/tool_calls_executed"] for r in rows)),
                "branches_per_prompt": float(np.mean([r.get("rollout/branches_per_prompt", 0.0) for r in rows])),
                "wall_s": wall})
    sft_acc, sft_per, sft_calls = demo.accuracy(base)
    summary = {
        "command": (f"arpo-jax demo --compare --methods {','.join(methods)} --seeds {seeds}"
                    f"{' --quick' if quick else ''}{f' --sft-model {sft_model}' if reused else ''}"),
        "labels": labels,
        "total_s": time.perf_counter() - t0, "out": str(out),
        "setting": (f"M = {size.total_rollouts} trajectories per prompt (ARPO: N = {size.initial_rollouts}), "
                    f"{size.prompts_per_step} prompts per step, {size.rl_steps} RL steps, {size.n_heldout} "
                    f"held-out questions (greedy), SFT {size.sft_steps} steps"),
        "sft": {"accuracy": sft_acc, "per_set": sft_per, "eval_tool_calls_per_question": sft_calls},
        "results": results}
    summary["markdown"] = render_markdown(summary)
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    if results_md:
        write_section(Path(results_md), summary["markdown"])
    print(summary["markdown"])
    return summary


def render_markdown(summary: dict) -> str:
    """The comparison section of ``docs/results.md`` from a ``compare.json`` summary: held-out
    accuracy (overall and per task set) after SFT and after each RL method, and each method's
    gain over SFT against its spread between seeds."""
    sft, results, names = summary["sft"], summary["results"], summary.get("labels", {})
    sets = sorted(sft["per_set"])
    seeds = len(next(iter(results.values())))
    head = ["method", "held-out accuracy", *sets, "gain over SFT", "tool calls / traj (train)",
            "tool calls executed (train)", "branches / prompt", "RL wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(f"| after SFT (one checkpoint) | {sft['accuracy']:.3f} | "
                 + " | ".join(f"{sft['per_set'][k]:.2f}" for k in sets) + " | | | | | |")
    for policy, rs in results.items():
        acc = [r["accuracy"] for r in rs]
        gain = np.asarray(acc) - sft["accuracy"]
        lines.append(
            f"| {names.get(policy, policy)} | {_mean_std(acc)} | "
            + " | ".join(_mean_std([r["per_set"][k] for r in rs], 2) for k in sets)
            + f" | {_mean_std(gain)} | {_mean_std([r['train_tool_calls_per_traj'] for r in rs], 2)} | "
            f"{_mean_std([r['train_tool_calls_total'] for r in rs], 0)} | "
            f"{_mean_std([r['branches_per_prompt'] for r in rs], 2)} | {_mean_std([r['wall_s'] for r in rs], 0)} |")
    title = " vs ".join(names.get(p, p).split(" (")[0] for p in results)
    return (f"## {title} (`--compare`)\n\nCommand: `{summary['command']}` (total {summary['total_s']:.0f} s)."
            f"\n\nSetting: {summary['setting']}. Same SFT checkpoint for every run; seeds 0..{seeds - 1} change "
            f"the RL rollouts and prompt order. Mean ± sample std over seeds; accuracy is pass@1.\n\n"
            + "\n".join(lines) + "\n\nAccuracy per seed: "
            + "; ".join(f"{names.get(p, p).split(' (')[0]} " + ", ".join(f"{r['accuracy']:.3f}" for r in rs)
                        for p, rs in results.items())
            + f". All per-run numbers: `{summary['out']}/compare.json`.\n")
