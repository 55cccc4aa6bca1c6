"""``arpo-jax eval``: k samples per question with the agent loop (no branching), scored and
aggregated into pass@k, answer metrics and tool statistics; trajectories dumped for
``arpo-jax analyze entropy``.

Outputs in ``out_dir``: ``metrics.json`` and ``metrics.md`` (``metrics.write_report``),
``samples.jsonl`` (one scored sample per line), ``trajectories/<set>.seed<s>.jsonl`` (rollout
dump records plus ``eval_set``, ``question_id``, ``seed``, ``sample``, ``correct`` and each
call's ``call_start``), ``entropy_around_tools.{json,png}`` and ``config.json``.

Seeds: every seed of ``seeds`` is one full pass (k samples of every question). The rollout of
batch ``b`` of set ``name`` under seed ``s`` uses ``run_seed(s, name, b)``, so a result does not
depend on which other sets are evaluated in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from arpo_jax.config import to_dict
from arpo_jax.data import Example, encode_prompt, read_eval_jsonl, read_eval_set
from arpo_jax.data.prompts import arpo_system_prompt
from arpo_jax.models.source import ModelSourceConfig
from arpo_jax.rewards.types import RewardConfig
from arpo_jax.rollout.config import RolloutConfig
from arpo_jax.tools.config import ToolsConfig

from .entropy import analyze_entropy
from .metrics import CorrectBy, build_report, clean_json, default_ks, write_report
from .trajectories import call_starts, sample_result, score_text


@dataclasses.dataclass(frozen=True)
class EvalDataConfig:
    """What to evaluate on.

    files: eval JSONL files (``read_eval_jsonl``; the set is named after the parent folder of
      ``<name>/test.jsonl``, else the file stem). sets: benchmark names (``EVAL_FILES``: aime24,
      math500, gsm8k, hotpotqa, ...) read under ``root`` ("" = ``$ARPO_DATA_ROOT`` or
      ``../shared/data/arpo``).
    max_questions: the first n questions of each set (0 = all). samples: k samples per question.
    pass_ks: the k of pass@k (default 1, powers of two, ``samples``).
    system_prompt: None = the ARPO system prompt (``byte_exact_system_prompt`` keeps its
      ``\\x08oxed`` bytes), "" = none, else this text.
    template_kwargs: chat-template arguments (e.g. ``{enable_thinking: false}``).
    lenient: skip malformed rows instead of failing.
    """

    files: list[str] = dataclasses.field(default_factory=list)
    sets: list[str] = dataclasses.field(default_factory=list)
    root: str = ""
    max_questions: int = 0
    samples: int = 4
    pass_ks: list[int] = dataclasses.field(default_factory=list)
    system_prompt: str | None = None
    byte_exact_system_prompt: bool = False
    template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    lenient: bool = False

    def __post_init__(self):
        if not self.files and not self.sets:
            raise ValueError("set data.files and/or data.sets")
        if self.samples < 1 or self.max_questions < 0:
            raise ValueError(f"data.samples must be >= 1 and data.max_questions >= 0, got {self.samples}, "
                             f"{self.max_questions}")
        bad = [k for k in self.pass_ks if not 1 <= k <= self.samples]
        if bad:
            raise ValueError(f"data.pass_ks {bad} outside [1, data.samples={self.samples}]")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything ``run_eval`` needs; load with ``load_config(EvalConfig, path, overrides)``.

    rollout: sampling and budgets; the runner forces ``policy: trajectory`` and
      ``total_rollouts = data.samples`` (no branching).
    correct_by: the pass@k verdict: "auto" (math equivalence on math sets, exact match
      elsewhere), "em", "math", "f1" (F1 >= correct_threshold) or "reward" (the configured
      reward's score >= correct_threshold).
    seeds: one full pass per seed; metrics per seed and mean ± std over seeds.
    batch_prompts: questions per rollout call (slots = batch_prompts × samples).
    dump_trajectories: write ``trajectories/*.jsonl`` and the entropy analysis.
    """

    model: ModelSourceConfig
    data: EvalDataConfig
    rollout: RolloutConfig = dataclasses.field(default_factory=lambda: RolloutConfig(policy="trajectory"))
    tools: ToolsConfig = dataclasses.field(default_factory=ToolsConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    correct_by: CorrectBy = "auto"
    correct_threshold: float = 1.0
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    batch_prompts: int = 8
    out_dir: str = "runs/eval"
    dump_trajectories: bool = True
    entropy_window: int = 30

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct ints, got {self.seeds}")
        if self.batch_prompts < 1:
            raise ValueError(f"batch_prompts must be >= 1, got {self.batch_prompts}")

    def eval_rollout(self) -> RolloutConfig:
        """``rollout`` with policy "trajectory" and ``total_rollouts = data.samples``."""
        k = self.data.samples
        return dataclasses.replace(self.rollout, policy="trajectory", total_rollouts=k,
                                   initial_rollouts=min(self.rollout.initial_rollouts, k), stale_entropy_baseline=False)


def run_seed(seed: int, set_name: str, batch: int) -> int:
    """The rollout seed of one batch: a function of (seed, set name, batch index) only."""
    return int(np.random.SeedSequence([seed, zlib.crc32(set_name.encode()), batch]).generate_state(1)[0])


def load_eval_sets(data: EvalDataConfig) -> dict[str, list[Example]]:
    """The questions of every configured set (first ``max_questions`` of each), by set name."""
    prompt = data.system_prompt if data.system_prompt is not None else arpo_system_prompt(data.byte_exact_system_prompt)
    kw = dict(system_prompt=prompt, lenient=data.lenient)
    out: dict[str, list[Example]] = {}
    for name in data.sets:
        try:
            out[name] = read_eval_set(name, data.root or None, **kw)
        except KeyError as e:
            raise ValueError(f"data.sets: {e.args[0]}") from None
    for f in data.files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"data.files: eval file {f!r} does not exist")
        examples = read_eval_jsonl(f, **kw)
        name = examples[0].data_source if examples else Path(f).stem
        if name in out:
            raise ValueError(f"data.files: set name {name!r} of {f!r} is used twice")
        out[name] = examples
    if data.max_questions:
        out = {k: v[: data.max_questions] for k, v in out.items()}
    return out


def load_model(src: ModelSourceConfig):
    """(model, model config, tokenizer, mesh) as ``arpo-jax sft`` and ``train`` build them."""
    from arpo_jax.data.tokenizer import load_tokenizer
    from arpo_jax.models import build_model, make_mesh

    tokenizer = load_tokenizer(src.tokenizer_dir)
    mesh = make_mesh(src.mesh)
    model, mcfg = build_model(src, len(tokenizer), mesh)
    return model, mcfg, tokenizer, mesh


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in stats for k in s})
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in keys}


def _prepare_dump_dir(cfg: EvalConfig) -> Path:
    dump_dir = Path(cfg.out_dir) / "trajectories"
    if cfg.dump_trajectories:
        dump_dir.mkdir(exist_ok=True)
        for old in dump_dir.glob("*.jsonl"):
            old.unlink()
    return dump_dir


def _dump_record(traj, s, name: str, ex: Example, enc, seed: int, sample: int, tokenizer, tool_names) -> dict:
    """The rollout dump record of one scored sample, with each tool call's ``call_start``."""
    from arpo_jax.rollout import trajectory_record

    rec = trajectory_record(traj, step=0, reward=s.reward, prompt_text=enc.text,
                            extra=dict(eval_set=name, question_id=ex.id, seed=seed, sample=sample, correct=s.correct,
                                       answer=s.answer))
    starts = call_starts(traj.tokens, rec["tool_calls"], traj.obs_spans, tokenizer, tool_names)
    for c, cs in zip(rec["tool_calls"], starts):
        c["call_start"] = cs
    return rec


class _SetRunner:
    """Rolls out every batch of one set under one seed, scores the samples and dumps them."""

    def __init__(self, cfg: EvalConfig, engine, tokenizer, dump_dir: Path):
        self.cfg, self.engine, self.tokenizer, self.dump_dir = cfg, engine, tokenizer, dump_dir

    def run(self, name: str, examples: list[Example], encoded: list, seed: int) -> tuple[list, list[dict]]:
        """(samples, per-batch rollout stats) of set ``name`` under ``seed``."""
        cfg, k = self.cfg, self.cfg.batch_prompts  # fixed, so a set's results do not depend on the other sets
        samples, batch_stats = [], []
        dump = open(self.dump_dir / f"{name}.seed{seed}.jsonl", "w") if cfg.dump_trajectories else None
        try:
            for b, lo in enumerate(range(0, len(examples), k)):
                exs, encs = examples[lo:lo + k], encoded[lo:lo + k]
                result = self.engine.run([e.token_ids for e in encs], seed=run_seed(seed, name, b))
                batch_stats.append(result.stats)
                rank: dict[int, int] = {}
                for traj in result.trajectories:
                    p = traj.prompt_index
                    i = rank[p] = rank.get(p, -1) + 1
                    scored = score_text(exs[p], traj.text, cfg.reward, correct_by=cfg.correct_by,
                                        threshold=cfg.correct_threshold)
                    s = sample_result(exs[p], traj, scored, seed=seed, sample=i)
                    samples.append(s)
                    if dump is not None:
                        rec = _dump_record(traj, s, name, exs[p], encs[p], seed, i, self.tokenizer,
                                           cfg.tools.protocol.tools)
                        dump.write(json.dumps(clean_json(rec), default=float, allow_nan=False) + "\n")
        finally:
            if dump is not None:
                dump.close()
        return samples, batch_stats


def _rollout_all(cfg: EvalConfig, sets: dict[str, list[Example]], model, tokenizer, mesh,
                 dump_dir: Path) -> tuple[list, dict, dict, dict]:
    """Every set under every seed → (samples, rollout stats and seconds per set and seed, tool stats)."""
    from arpo_jax.rollout import RolloutEngine
    from arpo_jax.tools.build import build_dispatcher
    from arpo_jax.tools.check import check_dispatcher

    encoded = {name: [encode_prompt(tokenizer, ex, **cfg.data.template_kwargs) for ex in exs]
               for name, exs in sets.items()}
    samples, rollout_stats, timing = [], {}, {}
    with build_dispatcher(cfg.tools) as dispatcher:
        check_dispatcher(dispatcher)  # refuses a sandbox that does not hold, before any model code runs
        engine = RolloutEngine(model, tokenizer, dispatcher, cfg.eval_rollout(), protocol=cfg.tools.protocol,
                               mesh=mesh, num_prompts=cfg.batch_prompts, seed=cfg.seeds[0])
        runner = _SetRunner(cfg, engine, tokenizer, dump_dir)
        for seed in cfg.seeds:
            for name, examples in sets.items():
                t0 = time.perf_counter()
                set_samples, batch_stats = runner.run(name, examples, encoded[name], seed)
                samples += set_samples
                rollout_stats.setdefault(name, {})[str(seed)] = _mean_stats(batch_stats)
                timing.setdefault(name, {})[str(seed)] = time.perf_counter() - t0
                print(f"eval {name} seed {seed}: {len(examples)} questions x {cfg.data.samples} samples in "
                      f"{timing[name][str(seed)]:.1f}s", file=sys.stderr)
        tool_stats = dispatcher.stats()
    return samples, rollout_stats, timing, tool_stats


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Runs the evaluation; returns the report (also written to ``cfg.out_dir``)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str) + "\n")
    sets = load_eval_sets(cfg.data)
    if not any(sets.values()):
        raise ValueError("no questions to evaluate (data.files / data.sets are empty)")
    model, _, tokenizer, mesh = load_model(cfg.model)
    dump_dir = _prepare_dump_dir(cfg)
    samples, rollout_stats, timing, tool_stats = _rollout_all(cfg, sets, model, tokenizer, mesh, dump_dir)
    ks = cfg.data.pass_ks or default_ks(cfg.data.samples)
    report = build_report(samples, ks, extra={
        "config": to_dict(cfg), "correct_by": cfg.correct_by, "samples_per_question": cfg.data.samples,
        "run_seeds": "rollout seed of batch b of set S under seed s: run_seed(s, S, b)",
        "rollout_stats": rollout_stats, "dispatcher_stats": tool_stats, "time_s": timing})
    files = write_report(report, out, samples)
    if cfg.dump_trajectories:
        ent = analyze_entropy([dump_dir], out, window=cfg.entropy_window)
        files.update({f"entropy_{k}": Path(v) for k, v in ent["files"].items()})
    report["files"] = {k: str(v) for k, v in files.items()}
    return report
