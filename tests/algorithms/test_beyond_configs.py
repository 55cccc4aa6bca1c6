"""The AEPO and Tree-GRPO configs load and carry the released values (BEYOND.md §1.7, §2.6)."""

from pathlib import Path

from arpo_jax.config import load_config
from arpo_jax.training.rl_config import RLConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_aepo_qwen3_14b_deepsearch():
    cfg = load_config(RLConfig, CONFIGS / "aepo_qwen3_14b_deepsearch.yaml")
    ro, loss = cfg.rollout, cfg.loss
    assert ro.policy == "aepo" and Path(cfg.data.train_files[0]).name == "hard_search_1k.parquet"
    assert (cfg.data.prompts_per_step, cfg.data.prompts_per_step // cfg.train.mini_batches) == (64, 8)
    assert (ro.max_prompt_tokens, ro.max_response_tokens, ro.max_tool_calls) == (2000, 6192, 6)
    assert (ro.total_rollouts, ro.initial_rollouts, ro.branches_per_source, ro.threshold, ro.entropy_weight) == (
        12, 6, 1, 0.5, 0.2)
    assert cfg.train.epochs == 5 and cfg.optimizer.lr == 1e-6 and loss.kl_coef == 0 and loss.entropy_coef == 0
    assert (loss.clip_eps_low, loss.clip_eps_high, loss.dual_clip_c) == (0.2, 0.2, 3.0)
    assert loss.clip_mode == "gradient_preserving" and loss.entropy_advantage and loss.entropy_advantage_alpha == 0.2


def test_tree_grpo_qwen25_3b_multihopqa():
    cfg = load_config(RLConfig, CONFIGS / "tree_grpo_qwen2.5_3b_multihopqa.yaml")
    ro, loss = cfg.rollout, cfg.loss
    assert cfg.algorithm.advantage == "tree" and (ro.initial_rollouts, ro.total_rollouts) == (2, 6)  # M, M·K
    assert ro.policy == "tree_search" and ro.max_tool_calls == 3
    assert (ro.tree_expansions_per_round, ro.tree_rounds, ro.tree_keep_leaves) == (2, 1, 3)  # N, L, K
    assert (cfg.data.prompts_per_step, cfg.data.prompts_per_step // cfg.train.mini_batches) == (512, 64)
    assert (loss.kl_coef, loss.kl_estimator, loss.entropy_coef) == (0.001, "k3", 0.001)
    assert cfg.train.steps == 180 and cfg.optimizer.warmup_steps == round(0.285 * 180)
