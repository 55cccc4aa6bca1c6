"""The YAML configs in configs/ load into their dataclasses and carry the paper's values
(../shared/DESIGN.md §2)."""

from pathlib import Path

import pytest

from arpo_jax.config import load_config
from arpo_jax.training.rl_config import RLConfig
from arpo_jax.training.sft_config import SFTConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RL_PREFIXES = ("arpo_", "grpo_", "aepo_", "tree_grpo_")
RL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(RL_PREFIXES))
PAPER = {  # file: (model dir, train file, M, N, prompts per step, response, tool calls)
    "arpo_qwen2.5_7b_reasoning.yaml": ("Qwen2.5-7B-Instruct", "train_10k", 16, 8, 128, 4096, 3),
    "grpo_qwen2.5_7b_reasoning.yaml": ("Qwen2.5-7B-Instruct", "train_10k", 16, 8, 128, 4096, 3),
    "arpo_qwen3_8b_deepsearch.yaml": ("Qwen3-8B", "hard_search_1k", 16, 8, 128, 8192, 5),
    "arpo_qwen3_14b_deepsearch.yaml": ("Qwen3-14B", "hard_search_1k", 12, 6, 64, 10000, 5),
}


def test_every_paper_config_is_present():
    assert set(PAPER) <= set(RL_CONFIGS)


@pytest.mark.parametrize("name", RL_CONFIGS)
def test_rl_config_loads(name):
    cfg = load_config(RLConfig, CONFIGS / name)
    assert cfg.data.prompts_per_step % cfg.train.mini_batches == 0
    rows = cfg.data.prompts_per_step // cfg.train.mini_batches * cfg.rollout.total_rollouts
    assert not cfg.train.micro_batch_size or rows % cfg.train.micro_batch_size == 0


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_values(name):
    model_dir, train, m, n, prompts, response, calls = PAPER[name]
    cfg = load_config(RLConfig, CONFIGS / name)
    assert Path(cfg.model.path).name == model_dir and not Path(cfg.model.path).is_absolute()
    assert cfg.model.param_dtype == "float32" and cfg.model.dtype == "bfloat16" and cfg.model.remat
    assert [Path(f).name for f in cfg.data.train_files] == [f"{train}.parquet"]
    assert cfg.data.train_files[0].startswith("../shared/data/arpo/rl_datasets/")
    ro = cfg.rollout
    assert (ro.total_rollouts, cfg.data.prompts_per_step) == (m, prompts)
    assert (ro.max_response_tokens, ro.max_prompt_tokens, ro.max_tool_calls) == (response, 1536, calls)
    assert (ro.temperature, ro.top_p, ro.top_k) == (1.0, 1.0, 0)
    if name.startswith("grpo_"):
        assert ro.policy == "trajectory" and cfg.algorithm.advantage == "grpo"
    else:
        assert ro.policy == "arpo_release" and cfg.algorithm.advantage == "arpo_soft"
        assert (ro.initial_rollouts, ro.branches_per_source, ro.threshold, ro.entropy_weight) == (n, 1, 0.5, 0.2)
        assert (ro.entropy_tokens, ro.entropy_topk) == (20, 10)
    # PPO mini-batch of 16 prompts; lr 1e-6 constant, clip 1.0, 2 epochs; no KL, no entropy bonus
    assert cfg.data.prompts_per_step // cfg.train.mini_batches == 16
    opt = cfg.optimizer
    assert (opt.lr, opt.schedule, opt.warmup_steps, opt.grad_clip) == (1e-6, "constant", 0, 1.0)
    assert cfg.train.epochs == 2 and cfg.train.steps == 0 and cfg.train.ppo_epochs == 1
    assert (cfg.loss.clip_eps_low, cfg.loss.clip_eps_high, cfg.loss.dual_clip_c) == (0.2, 0.2, 3.0)
    assert cfg.loss.kl_coef == 0 and cfg.loss.entropy_coef == 0 and cfg.loss.loss_agg_mode == "token-mean"
    assert cfg.reward.name == "arpo_f1" and cfg.algorithm.eps == 1e-6
    assert set(cfg.tools.protocol.tools) == {"python", "search"}


def test_arpo_and_grpo_7b_differ_only_in_policy_and_advantage():
    import dataclasses

    arpo = dataclasses.asdict(load_config(RLConfig, CONFIGS / "arpo_qwen2.5_7b_reasoning.yaml"))
    grpo = dataclasses.asdict(load_config(RLConfig, CONFIGS / "grpo_qwen2.5_7b_reasoning.yaml"))
    for cfg in (arpo, grpo):
        cfg["rollout"] = {k: v for k, v in cfg["rollout"].items() if k in ("total_rollouts", "max_response_tokens",
                                                                           "max_prompt_tokens", "max_tool_calls",
                                                                           "num_slots", "temperature")}
        cfg["algorithm"].pop("advantage")
        for key in ("out_dir",):
            cfg["train"].pop(key)
        cfg["logging"].pop("run_name")
    assert arpo == grpo


def test_mesh_overrides_documented_in_readme_load():
    """Every `model.mesh=...` line of configs/README.md applies to the config it names."""
    text = (CONFIGS / "README.md").read_text()
    lines = [ln.strip().strip("`") for ln in text.splitlines() if "model.mesh=" in ln and "arpo-jax plan" in ln]
    assert len(lines) >= 8
    for line in lines:
        words = line.split()
        name = next(w for w in words if w.endswith(".yaml"))
        overrides = [w for w in words if "=" in w and not w.startswith("--")]
        cfg = load_config(RLConfig, REPO / name, overrides)
        assert len(cfg.model.mesh) == 3


def test_sft_example_loads():
    cfg = load_config(SFTConfig, CONFIGS / "sft_example.yaml")
    assert cfg.train.batch_size % cfg.train.micro_batches == 0 and cfg.model.mesh == (1, -1, 1)


def test_data_paths_exist(shared_dir):
    for name in PAPER:
        cfg = load_config(RLConfig, CONFIGS / name)
        for f in cfg.data.train_files + cfg.data.val_files + [cfg.tools.search.cache_path]:
            assert (REPO / f).is_file(), f
