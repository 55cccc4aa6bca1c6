"""The memory planner: hand-computed and measured per-device bytes for a tiny model on the 8 fake
CPU devices, activations against XLA's buffer assignment, and the paper configs' verdicts."""

import dataclasses
from pathlib import Path

import jax
import pytest
import jax.numpy as jnp
from flax import nnx

from arpo_jax.cli import main
from arpo_jax.config import from_dict, load_config
from arpo_jax.models import Transformer, create_model, make_mesh
from arpo_jax.models.sharding import rows_sharding, state_shardings
from arpo_jax.sampling.state import init_state, state_shardings as sampler_shardings
from arpo_jax.apps.plan import GiB, PlanOptions, plan, resolve_model_config
from arpo_jax.training.rl_config import RLConfig
from arpo_jax.training.update import PolicyBatch, make_optimizer, update

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = dict(family="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, tie_word_embeddings=False)


def _tiny_cfg(mesh=(1, 4, 2), dtype="float32", remat=False, model=TINY, micro=4, prompt=15, response=16, m=4):
    """Two prompts x ``m`` trajectories in two mini-batches (``m`` rows each); 8 sampler slots."""
    return from_dict(RLConfig, dict(
        model=dict(config=model, tokenizer="unused", param_dtype=dtype, dtype=dtype, mesh=list(mesh), remat=remat),
        data=dict(prompts_per_step=2),
        rollout=dict(policy="trajectory", total_rollouts=m, max_prompt_tokens=prompt, max_response_tokens=response,
                     num_slots=8),
        train=dict(mini_batches=2, micro_batch_size=micro)))


def _device_bytes(tree) -> int:
    """Bytes device 0 holds of the arrays in ``tree`` (what the planner predicts)."""
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def test_tiny_model_matches_hand_computed_and_measured_bytes():
    cfg = _tiny_cfg()
    p = plan(cfg, PlanOptions(devices=8))
    # Hand-computed, mesh data=1 fsdp=4 tensor=2, fp32 (elements per device):
    # embed [256,64] (tensor,fsdp) 128*16; lm_head [64,256] (fsdp,tensor) 16*128; final norm 64;
    # per layer q [64,4,16] 16*2*16, k/v [64,2,16] 16*1*16, o [4,16,64] 2*16*16, q/k/v bias 32+16+16,
    # gate/up [64,128] 16*64, down [128,64] 64*16, two norms 2*64.
    layer = 512 + 256 + 256 + 512 + 32 + 16 + 16 + 3 * 1024 + 128
    params = 4 * (2048 + 2048 + 64 + 2 * layer)
    assert p.items["params"] == params == 55040
    assert p.items["opt_state"] == 2 * params + 4  # AdamW mu, nu (param dtype) + int32 step count
    assert p.items["grads"] == params  # micro-batch of 4 rows = the mini-batch of 4: one gradient tree
    # Sampler: 8 slots over data*fsdp = 4 -> 2, capacity 15 + 16 + 1 = 32, kv heads 2 / tensor 2 -> 1.
    cache = 2 * 2 * (2 * 32 * 1 * 16 * 4)  # layers x (k, v) x [2, 32, 1, 16] fp32
    assert p.items["kv_cache"] == cache + 7 * 2 * 4 + 2 * 2 * 4  # + 7 int32 [S] fields + rng [S, 2]

    mesh = make_mesh((1, 4, 2))
    mcfg, _ = resolve_model_config(cfg)
    model = create_model(mcfg, seed=0, mesh=mesh)
    graphdef, state = nnx.split(model)
    assert _device_bytes(state) == params
    opt = make_optimizer(cfg.optimizer)
    opt_state = jax.jit(opt.init, out_shardings=state_shardings(jax.eval_shape(opt.init, state), mesh))(state)
    assert _device_bytes(opt_state) == p.items["opt_state"]
    sstate = init_state(mcfg, 8, cfg.rollout.slot_capacity)
    sstate = jax.device_put(sstate, sampler_shardings(sstate, mesh))
    assert _device_bytes(sstate) == p.items["kv_cache"]

    # Activations by hand: b = 4 rows / 4 = 1 per device, T = 31, Dt = 4, Nd = 2, Kd = 1, Fd = 64, Vd = 128.
    b, t, d, dt = 1, 31, 64, 4
    per_layer = b * t * ((16 + 4 * dt) * d + 3 * dt * 64 + 3 * dt * (2 + 2) * 16) + b * 2 * t * t * (10 + dt)
    mask, logits = b * t * t, b * t * 128 * 13
    assert p.items["activations"] == 2 * per_layer + mask + logits
    remat = plan(_tiny_cfg(remat=True), PlanOptions(devices=8))
    assert remat.items["activations"] == 2 * b * t * d * dt + per_layer + mask + logits
    assert p.shapes["rows_per_device"] == 1 and p.shapes["num_micro"] == 1 and p.mesh == dict(data=1, fsdp=4, tensor=2)


def test_activation_estimate_against_xla(mesh=(1, 4, 2), dtype="bfloat16"):
    """The update's temporaries (activations + gradients + gathered weights) vs XLA's CPU buffer
    assignment: the estimate errs on the safe side, by < 40%."""
    model = dict(TINY, vocab_size=2048, hidden_size=128, intermediate_size=256, head_dim=32, num_layers=1)
    rows = 2 * mesh[1]
    cfg = _tiny_cfg(mesh, dtype, model=model, micro=rows, prompt=128, response=128, m=rows)
    p = plan(cfg, PlanOptions(devices=mesh[0] * mesh[1] * mesh[2]))
    m = make_mesh(mesh)
    mcfg, _ = resolve_model_config(cfg)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0))))
    with_sh = lambda tree: jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),  # noqa: E731
                                        tree, state_shardings(tree, m))
    opt = make_optimizer(cfg.optimizer)
    params = with_sh(params)
    opt_state = with_sh(jax.eval_shape(opt.init, params))
    sds = lambda d: jax.ShapeDtypeStruct((rows, 256), d, sharding=rows_sharding(m, 2, rows))  # noqa: E731
    batch = PolicyBatch(sds(jnp.int32), sds(jnp.int32), *[sds(jnp.float32)] * 5)
    with jax.set_mesh(m):
        compiled = update.lower(params, opt_state, batch, graphdef=graphdef, optimizer=opt, loss_cfg=cfg.loss,
                                num_micro=1).compile()
    measured = compiled.memory_analysis().temp_size_in_bytes
    estimate = p.items["activations"] + p.items["grads"] + p.items["gathered_weights"]
    assert 0.9 * measured <= estimate <= 1.4 * measured, (estimate, measured)


def _paper(name, *overrides):
    return load_config(RLConfig, CONFIGS / name, list(overrides))


def test_qwen25_7b_on_v5p8_fits_with_256_slots_not_with_2048():
    """Recorded in docs/benchmarks.md: the shipped 7B config fits a v5p-8 (4 chips, 95 GiB each);
    the paper's one-slot-per-trajectory layout (2048 slots, a 616 GiB KV cache) does not."""
    p = plan(_paper("arpo_qwen2.5_7b_reasoning.yaml"), PlanOptions(devices=4, device="v5p"))
    assert p.fits and p.mesh == dict(data=1, fsdp=4, tensor=1)
    assert 70 * GiB < p.peak < 85.5 * GiB and p.peak == p.phases["rollout"] and p.shapes["logits_chunk"] == 1024
    unchunked = plan(_paper("arpo_qwen2.5_7b_reasoning.yaml", "train.logits_chunk=0"),
                     PlanOptions(devices=4, device="v5p"))
    # [1, 5632, 152064] logits and their softmax temporaries per chip: the shipped chunk saves ~8.5 GiB
    assert 8 * GiB < unchunked.items["activations"] - p.items["activations"] < 9 * GiB
    assert unchunked.peak == unchunked.phases["update"] > p.peak
    naive = p.model.num_params() * 4 // 4  # fp32 / 4 chips; biases and norms are replicated, so a bit more
    assert naive < p.items["params"] < 1.001 * naive and p.model.param_dtype == "float32"
    assert round(p.items["kv_cache"] / GiB, 1) == 19.3  # 256 slots x 5633 tokens x 56 KiB / 4 chips
    full = plan(_paper("arpo_qwen2.5_7b_reasoning.yaml", "rollout.num_slots=0"), PlanOptions(devices=4, device="v5p"))
    assert not full.fits and full.shapes["num_slots"] == 2048
    assert round(full.items["kv_cache"] / GiB) == 154
    assert "does not fit" in full.reason and "rollout.num_slots=" in full.reason and 256 <= full.max_slots < 2048
    grpo = plan(_paper("grpo_qwen2.5_7b_reasoning.yaml"), PlanOptions(devices=4, device="v5p"))
    assert grpo.fits and grpo.peak == p.peak  # same memory: only the rollout policy differs


def test_qwen3_14b_on_8xh100_fits_tensor_parallel_not_fsdp_only():
    contiguous = ("rollout.kv_layout=contiguous", "rollout.num_slots=64")  # the config before the paged layout
    p = plan(_paper("arpo_qwen3_14b_deepsearch.yaml", *contiguous), PlanOptions(devices=8, device="h100"))
    assert p.fits and p.mesh == dict(data=1, fsdp=1, tensor=8)
    assert p.shapes["seq_len"] == 1536 + 10000 and p.shapes["num_slots"] == 64
    assert 60 * GiB < p.peak <= 72 * GiB
    fsdp = plan(_paper("arpo_qwen3_14b_deepsearch.yaml", "model.mesh=[1,8,1]", "train.micro_batch_size=8", *contiguous),
                PlanOptions(devices=8, device="h100"))
    assert not fsdp.fits and "even with rollout.num_slots=8" in fsdp.reason  # full-head attention of 11536 tokens
    v5p8 = plan(_paper("arpo_qwen3_14b_deepsearch.yaml", "model.mesh=[1,1,4]", *contiguous),
                PlanOptions(devices=4, device="v5p"))
    assert not v5p8.fits and v5p8.max_slots == 0
    paged = plan(_paper("arpo_qwen3_14b_deepsearch.yaml", "model.mesh=[1,1,4]"), PlanOptions(devices=4, device="v5p"))
    assert not paged.fits and paged.max_pages == 0 and "not even one prompt's worst case" in paged.reason


def test_paged_pool_bytes_and_trajectories_in_flight():
    """The paged pool per device (exact, against the sampler's real state on the mesh: pages
    not split over data×fsdp, kv heads over tensor) and the in-flight model by hand."""
    from arpo_jax.apps.plan_paged import LengthModel
    from arpo_jax.rollout.scheduler import worst_case_pages

    cfg = _tiny_cfg()
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, kv_layout="paged", page_size=4,
                                                               kv_pages=40, initial_rollouts=2, policy="arpo",
                                                               chunk_size=4))
    p = plan(cfg, PlanOptions(devices=8, lengths=LengthModel(response_fraction=0.5, branch_shared=0.5)))
    mcfg, _ = resolve_model_config(cfg)
    sstate = init_state(mcfg, 8, 32, paged=(40, 4, "reference"))  # capacity 15 + 16 + 1 = 32: 8 pages
    assert p.items["kv_cache"] == _device_bytes(jax.device_put(sstate, sampler_shardings(sstate, make_mesh((1, 4, 2)))))
    pool = 2 * 2 * (1 * 40 * 4 * 16 * 4)  # layers x (k, v) x [K/tensor = 1, 40 pages, 4, 16] fp32, whole per device
    assert pool < p.items["kv_cache"] < pool + 8 * 8 * 4 + 512  # + the page tables [8, 8] and per-slot fields
    # tree: prompt 15 + 2 initial x 8 (16 / 2) + 2 branches x 8 x (1 - 0.5) = 39 tokens -> 10 pages + 4 partial
    f = p.in_flight
    assert (f["tree_tokens"], f["tree_pages"], f["admission_pages"]) == (39, 14, 18)  # 18 = ceil(14 x 1.25)
    assert p.max_pages is None and f["prompts_in_flight"] == 2 and f["whole_step"]  # 40 // 18 = 2 prompts
    assert p.shapes["worst_case_pages"] == worst_case_pages(15, 16, 4, 4, 4) == 4 + 4 * (5 + 1 + 1) <= 40


def test_paged_paper_configs_keep_more_trajectories_in_flight():
    """configs/README.md: the shipped 8B and 14B deep-search configs on 8×H100 (tensor 8: the
    pool is split over kv heads) keep 4× the contiguous layout's trajectories in flight at the
    stated distribution (mean response max/2, branches sharing half); the 7B on v5p-8 (fsdp 4:
    every chip holds the whole pool) gains too little to switch, and GRPO (no sharing) loses."""
    h100 = PlanOptions(devices=8, device="h100")
    for name, slots, before, after in (("arpo_qwen3_8b_deepsearch.yaml", 160, 160, 640),
                                       ("arpo_qwen3_14b_deepsearch.yaml", 64, 60, 252)):  # 14B: M 12 per prompt
        p = plan(_paper(name), h100)
        assert p.fits and p.shapes["kv_layout"] == "paged" and p.in_flight["trajectories_in_flight"] == after
        assert p.max_pages >= p.shapes["kv_pages"] and p.peak <= p.usable_bytes
        old = plan(_paper(name, "rollout.kv_layout=contiguous", f"rollout.num_slots={slots}"), h100)
        assert old.fits and old.in_flight["trajectories_in_flight"] == before
        # per trajectory: 0.33 (8B) and 0.34 (14B) of a contiguous row of max_prompt + max_response
        assert p.in_flight["kv_bytes_per_trajectory"] < 0.35 * old.in_flight["kv_bytes_per_trajectory"]
        over = plan(_paper(name, f"rollout.kv_pages={2 * p.max_pages}"), h100)
        assert not over.fits and f"rollout.kv_pages={p.max_pages} fits" in over.reason
    v5p = PlanOptions(devices=4, device="v5p")
    arpo = plan(_paper("arpo_qwen2.5_7b_reasoning.yaml", "rollout.kv_layout=paged", "rollout.kv_pages=39800"), v5p)
    grpo = plan(_paper("grpo_qwen2.5_7b_reasoning.yaml", "rollout.kv_layout=paged", "rollout.kv_pages=39800"), v5p)
    in_flight = (arpo.in_flight["trajectories_in_flight"], grpo.in_flight["trajectories_in_flight"])
    assert arpo.fits and in_flight == (304, 224)  # contiguous: 256 for both


def test_scoring_pass_and_two_micro_batches_are_counted():
    rec = plan(_paper("arpo_qwen2.5_7b_reasoning.yaml", "train.old_logprobs=recompute"),
               PlanOptions(devices=4, device="v5p"))
    # rl.py scores a mini-batch one micro-batch (4 rows, 1 per chip) at a time
    assert rec.shapes["score_rows"] == 4 and rec.phases["score"] < rec.phases["update"]
    whole = plan(_paper("arpo_qwen2.5_7b_reasoning.yaml", "train.old_logprobs=recompute"),
                 PlanOptions(devices=4, device="v5p", score_rows=256))
    assert whole.phases["score"] > whole.phases["update"] and any("scoring runs 256 rows" in n for n in whole.notes)
    base = _tiny_cfg()
    two = plan(_tiny_cfg(micro=2), PlanOptions(devices=8))
    one = plan(base, PlanOptions(devices=8))
    assert two.shapes["num_micro"] == 2 and two.items["grads"] == 2 * one.items["grads"]
    assert any("2 micro-batches" in n for n in two.notes)


def test_cli_plan(capsys):
    cfg = str(CONFIGS / "arpo_qwen2.5_7b_reasoning.yaml")
    assert main(["plan", cfg, "--devices", "4", "--device", "v5p"]) == 0
    assert "fits: peak" in capsys.readouterr().out
    assert main(["plan", cfg, "rollout.num_slots=0", "--devices", "4", "--device", "v5p"]) == 1
    out = capsys.readouterr().out
    assert "does not fit" in out and "kv_cache" in out
    assert main(["plan", cfg, "--devices", "4", "--device", "tpu9"]) == 2
    assert "--device 'tpu9' is unknown" in capsys.readouterr().err
    assert main(["plan", cfg, "model.mesh=[1,8,1]", "--devices", "4"]) == 2
    assert "needs 8 devices" in capsys.readouterr().err


def test_each_host_rolls_out_on_its_own_policy_copy():
    """--hosts 2: each host samples its half of the slots on a full copy of the policy laid out
    over its own 4 devices (local_mesh_shape, as training/distributed.local_mesh): the copy
    counts in the rollout phase only (the trainer frees it before the update)."""
    from arpo_jax.training.distributed import local_mesh_shape

    cfg = _tiny_cfg()  # mesh data=1 fsdp=4 tensor=2 on 8 devices
    one = plan(cfg, PlanOptions(devices=8))
    two = plan(cfg, PlanOptions(devices=8, hosts=2))
    shape = local_mesh_shape(one.mesh, 4)
    assert shape == (1, 2, 2) and two.shapes["rollout_mesh"] == dict(data=1, fsdp=2, tensor=2)
    local = make_mesh(shape, jax.devices()[:4])
    mcfg, _ = resolve_model_config(cfg)
    copy = nnx.split(create_model(mcfg, seed=0, mesh=local))[1]
    assert one.items["rollout_params"] == 0 and two.items["rollout_params"] == _device_bytes(copy) > one.items["params"]
    sstate = init_state(mcfg, 4, cfg.rollout.slot_capacity)  # this host's 4 of the 8 slots
    assert two.items["kv_cache"] == _device_bytes(jax.device_put(sstate, sampler_shardings(sstate, local)))
    assert two.phases["update"] == one.phases["update"]
    assert two.phases["rollout"] == one.phases["rollout"] + two.items["rollout_params"]
    # fp32 master weights, bf16 compute: the copy is stored in bf16 (local_copy's dtype)
    mixed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"))
    assert 2 * plan(mixed, PlanOptions(devices=8, hosts=2)).items["rollout_params"] == two.items["rollout_params"]
    # a tensor split over 8 devices, on hosts of 4: each host's copy is split 4 ways on tensor
    assert local_mesh_shape(dict(data=1, fsdp=1, tensor=8), 4) == (1, 1, 4)
    assert local_mesh_shape(dict(data=2, fsdp=1, tensor=2), 4) == (2, 1, 2)
    with pytest.raises(ValueError, match="--hosts 3 must be a positive divisor of the 8 devices"):
        plan(cfg, PlanOptions(devices=8, hosts=3))
