"""The ``arpo-jax`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arpo_jax.tools.sandbox import SandboxUnavailable


def cmd_convert(args) -> int:
    """HF ⇄ arpo_jax checkpoint conversion."""
    from arpo_jax.models.hf_io import save_hf
    from arpo_jax.models.native_io import is_native_checkpoint, save_native
    from arpo_jax.models.source import load_checkpoint

    src_native = is_native_checkpoint(args.src)
    to = args.to or ("hf" if src_native else "arpo")
    model, cfg = load_checkpoint(args.src, dtype=args.dtype, param_dtype=args.dtype)
    if to == "hf":
        tok = None
        if not src_native and Path(args.src, "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(args.src)
        save_hf(model, cfg, args.dst, tokenizer=tok, dtype=args.dtype)
    else:
        save_native(model, cfg, args.dst)
        src = Path(args.src)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                     "generation_config.json"):
            if (src / name).is_file():
                (Path(args.dst) / name).write_bytes((src / name).read_bytes())
    print(f"wrote {to} checkpoint to {args.dst}")
    return 0


def cmd_info(args) -> int:
    """Architecture, parameter count, dtype and a memory estimate of a checkpoint or preset."""
    from arpo_jax.models.config import ModelConfig, get_preset
    from arpo_jax.models.native_io import CONFIG_NAME, is_native_checkpoint

    path = Path(args.path)
    if is_native_checkpoint(path):
        cfg = ModelConfig(**json.loads((path / CONFIG_NAME).read_text()))
    elif path.is_dir():
        cfg = ModelConfig.from_hf_config(path)
        raw = json.loads((path / "config.json").read_text())
        dt = raw.get("torch_dtype") or raw.get("dtype")
        if dt in ("float32", "bfloat16"):
            cfg = cfg.replace(param_dtype=dt, dtype=dt)
    else:
        try:
            cfg = get_preset(args.path)
        except KeyError:
            print(f"error: {args.path!r} is neither a checkpoint directory nor a preset name", file=sys.stderr)
            return 2
    n = cfg.num_params()
    pbytes = {"float32": 4, "bfloat16": 2}[cfg.param_dtype]
    info = {
        "family": cfg.family,
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "heads": f"{cfg.num_heads} q / {cfg.num_kv_heads} kv x {cfg.head_dim}",
        "ffn": cfg.intermediate_size,
        "vocab": cfg.vocab_size,
        "tied_embeddings": cfg.tie_word_embeddings,
        "params": n,
        "param_dtype": cfg.param_dtype,
        "memory_params_GiB": round(n * pbytes / 2**30, 3),
        # fp32 AdamW moments + fp32 grads, the trainer's layout
        "memory_train_GiB": round(n * (pbytes + 4 + 8) / 2**30, 3),
        "kv_cache_per_token_KiB": round(2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * pbytes / 1024, 2),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>24}: {v}")
    return 0


def cmd_bench(args) -> int:
    """Benchmarks; each writes JSON."""
    import importlib

    module = importlib.import_module(BENCHES[args.bench_name])
    result = module.run(args)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_demo(args) -> int:
    """The built-in demo (see arpo_jax/apps/demo/run.py): data → SFT → eval → ARPO → eval."""
    if args.walkthrough:
        from arpo_jax.apps.demo.walkthrough import run

        return 0 if run(Path(args.out))["ok"] else 1
    if args.compare:
        from arpo_jax.apps.demo.compare import run_compare

        run_compare(Path(args.out), seeds=args.seeds, quick=args.quick, results_md=args.results,
                    methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), sft_model=args.sft_model)
        return 0
    from arpo_jax.apps.demo.run import run_phases

    from arpo_jax.config import ConfigError, parse_overrides

    python = parse_overrides(args.overrides).get("tools", {}).get("python", {})
    unknown = [o for o in args.overrides if not o.startswith("tools.python.")]
    if unknown:
        raise ConfigError(f"demo takes only tools.python.* overrides, not {unknown[0]!r}")
    run_phases(Path(args.out), quick=args.quick, seed=args.seed, python=python)
    return 0


def cmd_sft(args) -> int:
    """Supervised fine-tuning (cold start); exit 0 finished, preempt_exit_code on SIGTERM, 3 diverged."""
    from arpo_jax.training.sft import run_sft
    from arpo_jax.training.sft_config import SFTConfig

    return _run_training(SFTConfig, run_sft, args)


def cmd_train(args) -> int:
    """RL training (GRPO / ARPO); exit 0 finished, preempt_exit_code on SIGTERM, 3 diverged."""
    from arpo_jax.training.rl import run_train
    from arpo_jax.training.rl_config import RLConfig

    return _run_training(RLConfig, run_train, args)


def _run_training(config_cls, run_fn, args) -> int:
    from arpo_jax.config import load_config
    from arpo_jax.training.checkpoint import NoValidCheckpointError
    from arpo_jax.training.distributed import initialize_from_env
    from arpo_jax.training.signals import TrainingDiverged

    cfg = load_config(config_cls, args.config, args.overrides)
    initialize_from_env()
    try:
        summary = run_fn(cfg)
    except NoValidCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(summary, default=str))
    return cfg.train.preempt_exit_code if summary["status"] == "preempted" else 0


def cmd_eval(args) -> int:
    """pass@k evaluation with the agent loop (see arpo_jax/eval/runner.py)."""
    from arpo_jax.config import load_config
    from arpo_jax.eval.runner import EvalConfig, run_eval

    report = run_eval(load_config(EvalConfig, args.config, args.overrides))
    print(Path(report["files"]["markdown"]).read_text(), end="")
    print(json.dumps(report["files"]))
    return 0


def cmd_analyze(args) -> int:
    """Analyses of rollout dumps (``analyze entropy``: entropy around tool calls)."""
    from arpo_jax.eval.entropy import analyze_entropy

    result = analyze_entropy(args.paths, args.out, window=args.window, clip_segments=not args.no_clip)
    print(json.dumps({"trajectories": result["trajectories"], "anchors": result["after_result"]["anchors"],
                      "overall_mean": result["overall_mean"], **result["files"]}))
    return 0


def cmd_tools_check(args) -> int:
    """Which sandbox runs model code here, its limits, and a containment self-test (exit 1 on failure)."""
    from arpo_jax.config import from_dict, load_values
    from arpo_jax.tools.check import format_report, sandbox_report
    from arpo_jax.tools.config import PythonToolConfig

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # only overrides were given
        config, overrides = None, [config, *overrides]
    values = load_values(config, overrides).get("tools", {}) or {}
    cfg = from_dict(PythonToolConfig, values.get("python", {}) or {}, "tools.python.")
    report = sandbox_report(cfg, run_self_test=not args.no_self_test)
    print(json.dumps(report, default=str) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def cmd_plan(args) -> int:
    """Per-device memory plan of an RL config; exit 1 when it does not fit."""
    from arpo_jax.apps.plan import run_plan_command

    return run_plan_command(args)


BENCHES = {"sampler": "arpo_jax.apps.sampler_bench", "update": "arpo_jax.apps.update_bench",
           "rollout": "arpo_jax.apps.rollout_bench"}


def _add_checkpoint_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint HF <-> arpo_jax")
    p.add_argument("src", help="source directory (HF or arpo_jax checkpoint)")
    p.add_argument("dst", help="destination directory")
    p.add_argument("--to", choices=["hf", "arpo"], help="target format (default: the other one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="storage dtype of the output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a checkpoint directory or a preset name")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)


def _add_run_commands(sub) -> None:
    p = sub.add_parser("demo", help="run the built-in demo")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--quick", action="store_true", help="the reduced demo (the test suite's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="RL methods from the same SFT checkpoint")
    p.add_argument("--methods", default="grpo,arpo", help="with --compare: any of grpo,arpo,aepo,tree_grpo")
    p.add_argument("--sft-model", default=None, help="with --compare: the SFT export of a seed-0 demo run "
                   "(same data and SFT) instead of training it again")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method with --compare")
    p.add_argument("--results", default="docs/results.md", help="Markdown written by --compare")
    p.add_argument("--walkthrough", action="store_true", help="the model/checkpoint walkthrough instead")
    p.add_argument("overrides", nargs="*", help="tools.python.* overrides for every phase, e.g. "
                   "tools.python.sandbox=rlimit (the explicit weaker fallback; docs/sandbox.md)")
    p.set_defaults(func=cmd_demo)
    for name, func, help_, example, override in (
            ("train", cmd_train, "RL training: GRPO or ARPO rollouts with tools, optax update", "see configs/",
             "dotted key=value overrides"),
            ("sft", cmd_sft, "supervised fine-tuning on multi-turn tool traces (cold start)",
             "see configs/sft_example.yaml", "dotted key=value overrides, e.g. train.steps=100"),
            ("eval", cmd_eval, "pass@k evaluation on eval sets (Markdown + JSON + entropy plot)",
             "see configs/eval_example.yaml", "dotted key=value overrides, e.g. data.samples=8")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help=f"YAML config ({example})")
        p.add_argument("overrides", nargs="*", help=override)
        p.set_defaults(func=func)


def _add_analysis_commands(sub) -> None:
    p = sub.add_parser("analyze", help="analyse rollout dumps")
    analyze_sub = p.add_subparsers(dest="analysis", required=True)
    ap = analyze_sub.add_parser("entropy", help="mean token entropy around tool calls and results")
    ap.add_argument("paths", nargs="+", help="dump JSONL files or directories (searched for *.jsonl)")
    ap.add_argument("--out", required=True, help="output directory (entropy_around_tools.json/.png)")
    ap.add_argument("--window", type=int, default=30, help="positions -W..+W around each anchor")
    ap.add_argument("--no-clip", action="store_true", help="let windows cross into neighbouring segments")
    ap.set_defaults(func=cmd_analyze)

    p = sub.add_parser("tools", help="the agent's tools: `tools check` reports the Python sandbox and self-tests it")
    tools_sub = p.add_subparsers(dest="tools_command", required=True)
    tp = tools_sub.add_parser("check", help="sandbox mode, limits and a containment self-test (exit 1 on failure)")
    tp.add_argument("config", nargs="?", help="a train/eval YAML whose tools.python section to check")
    tp.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tools.python.sandbox=rlimit")
    tp.add_argument("--json", action="store_true")
    tp.add_argument("--no-self-test", action="store_true", help="only build the sandbox and print its limits")
    tp.set_defaults(func=cmd_tools_check)


def _add_plan_command(sub) -> None:
    p = sub.add_parser("plan", help="per-device memory of an RL config on a mesh (exit 1 if it does not fit)")
    p.add_argument("config", help="RL YAML config (see configs/README.md)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.mesh=[1,4,1]")
    p.add_argument("--devices", type=int, help="devices of the mesh (default: this machine's)")
    p.add_argument("--device", help="device kind: v5p, v5e, v6e, v4, h100, h200 (sets the memory)")
    p.add_argument("--device-memory-gib", type=float, help="memory per device in GiB (overrides --device)")
    p.add_argument("--usable-fraction", type=float, default=0.9, help="share of it the plan may use")
    p.add_argument("--preset", help="model preset instead of model.path's config")
    p.add_argument("--logits-chunk", type=int, help="time chunk of the update's logits (0 = none)")
    p.add_argument("--hosts", type=int, default=1,
                   help="JAX processes the devices span (each rolls out on its own policy copy; v5p-16: 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)


def _add_bench_command(sub, with_benches: bool) -> None:
    import importlib

    p = sub.add_parser("bench", help="run a benchmark (writes JSON)")
    bench_sub = p.add_subparsers(dest="bench_name", required=True)
    for name, module_name in BENCHES.items():
        bp = bench_sub.add_parser(name)
        if with_benches:  # importing a benchmark module is slow: only when asked for
            importlib.import_module(module_name).add_arguments(bp)
        bp.set_defaults(func=cmd_bench)


def build_parser(with_benches: bool = True) -> argparse.ArgumentParser:
    """The ``arpo-jax`` parser; ``with_benches`` imports the benchmark modules for their options."""
    parser = argparse.ArgumentParser(prog="arpo-jax", description="ARPO for tool-using LLM agents, in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_checkpoint_commands(sub)
    _add_run_commands(sub)
    _add_analysis_commands(sub)
    _add_plan_command(sub)
    _add_bench_command(sub, with_benches)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(with_benches=bool(argv) and argv[0] == "bench").parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, SandboxUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
