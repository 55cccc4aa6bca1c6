"""``arpo-jax demo``: a small tool-using agent trained on a CPU from nothing.

Phases (each one a real command of the project, run in-process from configs written to
``OUT/configs/`` so any phase can be re-run with the CLI):

1. data — synthetic tasks that need the tools (arithmetic → Python, facts about generated
   entities → BM25 search over a generated corpus, multi-hop → both), a BPE tokenizer with the
   tool tags, SFT traces made with the real tools (``arpo_jax.apps.demo.data``);
2. sft — cold start of a tiny Qwen-architecture model from scratch (``arpo-jax sft``);
3. eval before RL — greedy agent loop on the held-out split (``arpo-jax eval``);
4. rl — ARPO with the real sandboxed tools (``arpo-jax train``);
5. eval after RL, plots (reward and tool calls per step; entropy around tool results) and a
   summary table.

``--compare --seeds S``: GRPO (trajectory rollouts) vs ARPO at the same budget M from the same
SFT checkpoint, S seeds each; writes ``docs/results.md``-style Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from arpo_jax.apps.demo import expected
from arpo_jax.apps.demo import tasks as T
from arpo_jax.apps.demo.methods import method as demo_method

REWARDS = {"arith": "math", "fact": "qa_em", "multihop": "math"}
MAX_PROMPT, MAX_RESPONSE = 64, 128  # demo prompts are ~35 tokens, the longest traces ~90


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """How big each phase is (default: <= 10 minutes on 2 cores; quick: the CI test)."""

    n_train: int
    n_heldout: int
    sft_steps: int
    rl_steps: int
    prompts_per_step: int
    total_rollouts: int
    initial_rollouts: int
    sft_batch: int = 32


SIZES = {"default": DemoSize(40000, 150, 2000, 40, 8, 8, 4, sft_batch=8),  # SFT batches: packed rows
         "quick": DemoSize(300, 12, 24, 2, 4, 4, 2, sft_batch=4)}


def _write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sft_config(paths: dict, out: Path, size: DemoSize, seed: int) -> dict:
    base = yaml.safe_load((Path(__file__).resolve().parents[3] / "configs" / "demo" / "sft.yaml").read_text()) \
        if (Path(__file__).resolve().parents[3] / "configs" / "demo" / "sft.yaml").is_file() else None
    if base is None:
        raise FileNotFoundError("configs/demo/sft.yaml not found next to the package")
    base["model"]["tokenizer"] = paths["tokenizer"]
    base["model"]["init_seed"] = seed
    base["data"]["train_files"] = [paths["sft_traces"]]
    base["train"].update(steps=size.sft_steps, batch_size=size.sft_batch, out_dir=str(out / "sft"), seed=seed)
    base["logging"].update(tensorboard=False)
    return base


def tools_config(paths: dict, python: dict | None = None) -> dict:
    return {"protocol": {"tools": ["python", "search"]}, "python": {"timeout_s": 10, **(python or {})},
            "search": {**paths["search"], "corpus_path": paths["corpus"], "index_dir": paths["index_dir"]}}


def rollout_config(size: DemoSize, policy: str) -> dict:
    return {"policy": policy, "total_rollouts": size.total_rollouts, "initial_rollouts": size.initial_rollouts,
            "max_response_tokens": MAX_RESPONSE, "max_prompt_tokens": MAX_PROMPT, "max_tool_calls": 3, "chunk_size": 16,
            "entropy_tokens": 10, "paper_decision": "stochastic"}


def rl_config(paths: dict, model: str, out: Path, size: DemoSize, method: str, seed: int,
              python: dict | None = None) -> dict:
    """The RL config of one demo run of ``method`` (``methods.methods``: grpo, arpo, aepo, tree_grpo)."""
    m = demo_method(method, size.total_rollouts, size.initial_rollouts)
    return {
        "model": {"path": model, "mesh": [1, 1, 1]},
        "data": {"train_files": paths["train_prompts"], "prompts_per_step": size.prompts_per_step,
                 "system_prompt": T.SYSTEM_PROMPT},
        "rollout": {**rollout_config(size, m.rollout["policy"]), **m.rollout},
        "tools": tools_config(paths, python),
        "reward": {"by_source": REWARDS},
        "algorithm": dict(m.algorithm),
        **({"loss": dict(m.loss)} if m.loss else {}),
        "optimizer": {"lr": 1.0e-3, "grad_clip": 1.0},
        "train": {"steps": size.rl_steps, "seed": seed, "out_dir": str(out), "save_every": 0, "keep": 1,
                  "pad_len": MAX_PROMPT + MAX_RESPONSE,
                  "micro_batch_size": size.total_rollouts * 2},
        "logging": {"tensorboard": False, "run_name": f"demo_{method}"},
    }


def eval_config(paths: dict, model: str, out: Path, size: DemoSize, python: dict | None = None) -> dict:
    return {
        "model": {"path": model, "mesh": [1, 1, 1]},
        "data": {"files": paths["heldout_prompts"], "samples": 1, "system_prompt": T.SYSTEM_PROMPT},
        "rollout": {**rollout_config(size, "trajectory"), "greedy": True, "total_rollouts": 1,
                    "initial_rollouts": 1},
        "tools": tools_config(paths, python),
        "reward": {"by_source": REWARDS},
        "correct_by": "auto",
        "batch_prompts": 32,
        "out_dir": str(out),
    }


def accuracy(report: dict) -> tuple[float, dict[str, float], float]:
    """(overall pass@1 weighted by questions, per set, tool calls per question) of an eval report."""
    per, n, calls = {}, 0, 0.0
    for name, s in report["sets"].items():
        m = next(iter(s["per_seed"].values()))
        per[name] = m["pass@1"]
        n += s["questions"]
        calls += m["tool_calls_per_question"]["total"] * s["questions"]
    overall = sum(report["sets"][k]["questions"] * v for k, v in per.items()) / max(n, 1)
    return overall, per, calls / max(n, 1)


def plot_training(metrics_path: Path, png: Path) -> Path:
    """Reward and tool calls per RL step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    steps = [r["step"] for r in rows if "reward/mean" in r]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(steps, [r["reward/mean"] for r in rows if "reward/mean" in r], marker="o")
    ax[0].set(xlabel="RL step", ylabel="mean reward", title="reward")
    ax[1].plot(steps, [r["rollout/tool_calls_per_traj"] for r in rows if "reward/mean" in r], marker="o",
               color="tab:orange")
    ax[1].set(xlabel="RL step", ylabel="tool calls / trajectory", title="tool use")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _load(cls, path: Path):
    from arpo_jax.config import load_config

    return load_config(cls, path)


def _final_eval_and_plots(out: Path, paths: dict, rl_model: str, size: DemoSize, python: dict) -> tuple[dict, dict]:
    """Held-out evaluation of the RL model, the training plot and the entropy-around-tools plots."""
    from arpo_jax.eval.entropy import analyze_entropy
    from arpo_jax.eval.runner import EvalConfig, run_eval

    after = run_eval(_load(EvalConfig, _write(out / "configs" / "eval_rl.yaml",
                                              eval_config(paths, rl_model, out / "eval_rl", size, python))))
    plots = {"training": str(plot_training(out / "rl" / "metrics.jsonl", out / "rl_reward_tools.png"))}
    ent = analyze_entropy([out / "rl" / "rollouts"], out / "entropy_rl")
    plots.update({f"entropy_rl_{k}": str(v) for k, v in ent["files"].items()})
    plots.update({k: v for k, v in after["files"].items() if k.startswith("entropy_")})
    return after, plots


def run_phases(out: Path, *, quick: bool = False, seed: int = 0, python: dict | None = None) -> dict[str, Any]:
    """The whole demo; returns the summary (also written to ``OUT/summary.json``). ``python``:
    ``tools.python`` settings for every phase (e.g. ``{"sandbox": "rlimit"}``, the explicit opt-in)."""
    from arpo_jax.config import from_dict
    from arpo_jax.tools import PythonToolConfig

    from arpo_jax.apps.demo.data import prepare_demo_data
    from arpo_jax.eval.runner import EvalConfig, run_eval
    from arpo_jax.training.rl import run_train
    from arpo_jax.training.rl_config import RLConfig
    from arpo_jax.training.sft import run_sft
    from arpo_jax.training.sft_config import SFTConfig

    size = SIZES["quick" if quick else "default"]
    python = dict(python or {})
    tool_cfg = from_dict(PythonToolConfig, python, "tools.python.") if python else None  # None: the default
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def phase(key: str, label: str, fn):
        print(label, flush=True)
        t = time.perf_counter()
        result = fn()
        times[key] = time.perf_counter() - t
        return result

    paths = phase("data_s", f"[1/5] data: synthetic tasks, corpus, tokenizer, SFT traces -> {out / 'data'}",
                  lambda: prepare_demo_data(out / "data", seed=seed, quick=quick, n_train=size.n_train,
                                            n_heldout=size.n_heldout, python=tool_cfg))
    sft = phase("sft_s", "[2/5] cold-start SFT (arpo-jax sft)", lambda: run_sft(
        _load(SFTConfig, _write(out / "configs" / "sft.yaml", sft_config(paths, out, size, seed)))))
    sft_model = sft["exported"][-1]
    before = phase("eval_sft_s", "[3/5] held-out evaluation after SFT (arpo-jax eval)", lambda: run_eval(
        _load(EvalConfig, _write(out / "configs" / "eval_sft.yaml", eval_config(paths, sft_model, out / "eval_sft",
                                                                                size, python)))))
    rl = phase("rl_s", "[4/5] ARPO RL with the sandboxed tools (arpo-jax train)", lambda: run_train(
        _load(RLConfig, _write(out / "configs" / "arpo.yaml", rl_config(paths, sft_model, out / "rl", size, "arpo",
                                                                          seed, python)))))
    rl_model = rl["exported"][-1]
    after, plots = phase("eval_rl_s", "[5/5] held-out evaluation after RL, plots",
                         lambda: _final_eval_and_plots(out, paths, rl_model, size, python))
    times["total_s"] = time.perf_counter() - t0

    rows = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    acc_sft, per_sft, calls_sft = accuracy(before)
    acc_rl, per_rl, calls_rl = accuracy(after)
    summary = {
        "accuracy_after_sft": acc_sft, "accuracy_after_rl": acc_rl, "per_set_after_sft": per_sft,
        "per_set_after_rl": per_rl, "tool_calls_per_question_sft": calls_sft, "tool_calls_per_question_rl": calls_rl,
        "branches_per_prompt": float(np.mean([r.get("rollout/branches_per_prompt", 0.0) for r in rows])),
        "rl_reward_first": rows[0]["reward/mean"], "rl_reward_last": rows[-1]["reward/mean"],
        "times": times, "quick": quick, "seed": seed,
        "outputs": {"data": str(out / "data"), "sft_model": sft_model, "rl_model": rl_model,
                    "rl_metrics": str(out / "rl" / "metrics.jsonl"), "rollout_dumps": str(out / "rl" / "rollouts"),
                    "eval_sft": str(out / "eval_sft"), "eval_rl": str(out / "eval_rl"), **plots},
    }
    summary["expected"] = expected.check(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(summary_table(summary), flush=True)
    return summary


def _range(s: dict, key: str) -> str:
    lo_hi = s.get("expected", {}).get("ranges", {}).get(key)
    return f"{lo_hi[0]:.1%}–{lo_hi[1]:.1%}" if lo_hi else ""


def summary_table(s: dict) -> str:
    """The printed result: this run next to the documented range over seeds, then the verdict."""
    lines = ["", "| | after SFT | after ARPO RL | documented range (after SFT; after RL) |", "|---|---|---|---|",
             f"| held-out accuracy | {s['accuracy_after_sft']:.1%} | {s['accuracy_after_rl']:.1%} | "
             f"{_range(s, 'accuracy_after_sft')}; {_range(s, 'accuracy_after_rl')} |"]
    for k in s["per_set_after_sft"]:
        after = s["per_set_after_rl"].get(k, float("nan"))
        lines.append(f"| … {k} | {s['per_set_after_sft'][k]:.1%} | {after:.1%} | |")
    seen = expected.observed(s)  # the checked quantities, computed in one place
    lines += [f"| gain of RL over SFT | | {seen['gain']:+.1%} | {_range(s, 'gain')} |",
              f"| lowest task family after RL | | {seen['lowest_family_after_rl']:.1%} | "
              f"{_range(s, 'lowest_family_after_rl')} |",
              f"| tool calls / question | {s['tool_calls_per_question_sft']:.2f} | "
              f"{s['tool_calls_per_question_rl']:.2f} | |",
              f"| branches / prompt (RL) | | {s['branches_per_prompt']:.2f} | |",
              f"| wall time | sft {s['times']['sft_s']:.0f}s | rl {s['times']['rl_s']:.0f}s, total "
              f"{s['times']['total_s']:.0f}s | |", ""]
    verdict = s.get("expected", {})
    if verdict.get("within") is True:
        lines.append(f"within the documented range ({expected.RESULTS}, seeds {expected.DOCUMENTED['seeds']})")
    elif verdict.get("within") is False:
        lines += [f"OUTSIDE THE DOCUMENTED RANGE: {flag}" for flag in verdict["flags"]]
    lines += ["", "outputs: " + ", ".join(f"{k}={v}" for k, v in s["outputs"].items()), ""]
    return "\n".join(lines)
