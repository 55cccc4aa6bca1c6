"""SFT in process on a tiny model: learning, HF export, NaN safety, resume at an epoch boundary."""

import json

import numpy as np
import pytest

from arpo_jax.config import load_config
from arpo_jax.models import ModelConfig, make_mesh
from arpo_jax.training.checkpoint import Checkpointer
from arpo_jax.training.sft import run_sft
from arpo_jax.training.sft_config import SFTConfig
from arpo_jax.training.signals import TrainingDiverged
from arpo_jax.training.state import abstract_train_state
from arpo_jax.training.update import cached_optimizer

from .sft_tiny import build_tokenizer, sft_yaml, write_sharegpt

EXACT = ("loss", "grad_norm", "accuracy", "num_tokens", "skipped", "lr", "epoch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    build_tokenizer(root / "tok")
    return root


def _run(tiny, name, overrides=(), n_examples=16):
    data = write_sharegpt(tiny / f"{name}.jsonl", n_examples)
    yaml_path = sft_yaml(tiny / f"{name}.yaml", tiny / "tok", data, tiny / name)
    cfg = load_config(SFTConfig, yaml_path, list(overrides))
    return cfg, run_sft(cfg)


def _metrics(out_dir):
    return [json.loads(s) for s in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _restore(cfg, step):
    ck = Checkpointer(cfg.train.out_dir + "/checkpoints")
    meta = ck.read_meta(step)
    _, target = abstract_train_state(ModelConfig(**meta["model_config"]), cached_optimizer(cfg.optimizer),
                                     make_mesh(cfg.model.mesh))
    r = ck.restore(target, step=step)
    ck.close()
    return r


def test_loss_decreases_and_the_export_loads_in_transformers(tiny, capsys):
    import torch
    import transformers

    from arpo_jax.models import load_hf

    held_out = write_sharegpt(tiny / "held_out.jsonl", 6, seed=99)
    cfg, summary = _run(tiny, "learn", ["train.steps=24", "train.export_at_end=true", "logging.tensorboard=true",
                                        f"data.eval_files=[{held_out}]", "train.eval_every=12",
                                        "train.export_every=12"])
    rows = _metrics(tiny / "learn")
    losses = [m["loss"] for m in rows]
    assert summary["status"] == "finished" and summary["step"] == 24 and len(losses) == 24
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
    assert rows[23]["eval/loss"] < rows[11]["eval/loss"] < losses[0]
    assert "eval/loss" not in rows[12]
    assert summary["exported"][0].endswith("hf/step_12") and (tiny / "learn" / "hf" / "step_24").is_dir()
    assert (tiny / "learn" / "tb").is_dir()
    assert json.loads((tiny / "learn" / "status.json").read_text())["step"] == 24
    export = tiny / "learn" / "hf" / "final"
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(export)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(export))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    model, _ = load_hf(export)
    np.testing.assert_allclose(np.asarray(model(np.asarray([ids], np.int32))), ref, atol=2e-4)
    # transformers 5 reloads this custom tokenizer (saved beside a qwen2 config.json) as Qwen2Tokenizer,
    # which splits digits differently: the export says so.
    sample = "What is 12 plus 7?"
    original = transformers.AutoTokenizer.from_pretrained(str(tiny / "tok"))
    differs = tok(sample)["input_ids"] != original(sample)["input_ids"]
    assert ("tokenizes differently from the training tokenizer" in capsys.readouterr().err) == differs
    # SFT again, starting from the exported HF directory (model.path; load_hf)
    yaml_path = sft_yaml(tiny / "again.yaml", tiny / "tok", tiny / "learn.jsonl", tiny / "again",
                         model={"path": str(export), "tokenizer": str(tiny / "tok"), "mesh": [1, 1, 1]}, steps=2)
    again = run_sft(load_config(SFTConfig, yaml_path))
    assert again["status"] == "finished" and abs(_metrics(tiny / "again")[0]["loss"] - losses[-1]) < 0.5


def test_nan_step_is_skipped_reported_and_the_run_continues(tiny, capsys):
    _, summary = _run(tiny, "nan1", ["train.steps=5", "train.debug_nan_step=3"])
    rows = _metrics(tiny / "nan1")
    assert summary["status"] == "finished" and summary["skipped_total"] == 1
    assert [r["skipped"] for r in rows] == [0, 0, 1, 0, 0] and rows[2]["loss"] is None
    assert rows[3]["skipped_total"] == 1 and rows[3]["loss"] is not None
    assert "step 3: non-finite loss or gradient, update skipped" in capsys.readouterr().err


def test_consecutive_nan_steps_stop_with_a_usable_checkpoint(tiny, capsys):
    overrides = ["train.steps=8", "train.save_every=1", "train.keep=10", "train.debug_nan_step=2",
                 "train.debug_nan_count=3", "train.max_consecutive_skips=3"]
    with pytest.raises(TrainingDiverged, match="stopped at step 4: 3 consecutive updates had a non-finite"):
        _run(tiny, "nan3", overrides)
    assert json.loads((tiny / "nan3" / "status.json").read_text())["status"] == "diverged"
    assert "train.max_consecutive_skips=3" in capsys.readouterr().err
    cfg = load_config(SFTConfig, tiny / "nan3.yaml", overrides)
    last, good = _restore(cfg, 4), _restore(cfg, 1)
    assert last.meta["skips"] == {"total": 3, "consecutive": 3}
    for a, b in zip(*(jax_leaves(r.state["params"]) for r in (last, good))):
        np.testing.assert_array_equal(a, b)  # the skipped updates left the parameters alone
    _, summary = _run(tiny, "nan3", overrides[:3])  # resumes from step 4 and finishes
    assert summary["status"] == "finished" and summary["step"] == 8
    assert [r["step"] for r in _metrics(tiny / "nan3")] == list(range(1, 9))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_resume_at_an_epoch_boundary_continues_into_the_next_epoch(tiny):
    base = ["train.save_every=100"]
    _run(tiny, "epoch_a", base + ["train.steps=2"], n_examples=8)  # 2 batches per epoch: ends on the boundary
    cfg = load_config(SFTConfig, tiny / "epoch_a.yaml", base + ["train.steps=2"])
    assert _restore(cfg, 2).meta["data_position"] == {"epoch": 1, "index": 0}
    _run(tiny, "epoch_a", base + ["train.steps=5"], n_examples=8)
    _run(tiny, "epoch_b", base + ["train.steps=5"], n_examples=8)
    resumed, straight = _metrics(tiny / "epoch_a"), _metrics(tiny / "epoch_b")
    assert [r["epoch"] for r in resumed] == [0.0, 0.5, 1.0, 1.5, 2.0]
    for a, b in zip(resumed, straight):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}


def test_cli_reports_config_and_data_mistakes_in_one_line(tiny, capsys):
    from arpo_jax.cli import main

    yaml_path = sft_yaml(tiny / "cli.yaml", tiny / "tok", tiny / "missing.jsonl", tiny / "cli")
    assert main(["sft", str(yaml_path), "train.bogus=1"]) == 2
    assert "error: unknown config key 'train.bogus'" in capsys.readouterr().err
    assert main(["sft", str(yaml_path), "train.batch_size=3"]) == 2
    assert "must be a positive multiple of train.micro_batches" in capsys.readouterr().err
    assert main(["sft", str(yaml_path)]) == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err


def test_sft_micro_batches_stay_on_their_devices_and_match_one_batch():
    """Strided micro-batches of a row-sharded batch need no resharding (the compiled step's only
    collective is the gradient all-reduce), and accumulating them equals one full batch."""
    import re

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from arpo_jax.models import create_model, get_preset
    from arpo_jax.models.sharding import rows_sharding
    from arpo_jax.training.sft import sft_step
    from arpo_jax.training.update import OptimizerConfig

    cfg = get_preset("qwen2.5-0.5b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)
    mesh = make_mesh((4, 1, 1), jax.devices()[:4])
    graphdef, params = nnx.split(create_model(cfg, seed=0, mesh=mesh))
    opt = cached_optimizer(OptimizerConfig(lr=1e-3))
    rng = np.random.default_rng(0)
    lengths = np.array([12, 3, 7, 12, 5, 9, 2, 11])
    batch = {"tokens": rng.integers(0, 64, (8, 12)).astype(np.int32),
             "attention_mask": (np.arange(12)[None] < lengths[:, None]).astype(np.int32)}
    batch["loss_mask"] = batch["attention_mask"].astype(np.float32)
    batch = {k: jax.device_put(v, rows_sharding(mesh, 2, 8)) for k, v in batch.items()}
    results = {}
    with jax.set_mesh(mesh):
        for k in (1, 2, 4):
            kw = dict(graphdef=graphdef, optimizer=opt, num_micro=k)
            if k == 2:
                hlo = sft_step.lower(params, opt.init(params), batch, jnp.float32(1), **kw).compile().as_text()
                kinds = r"all-to-all|collective-permute|all-gather|reduce-scatter|all-reduce"
                collectives = set(re.findall(kinds, hlo))
                assert collectives == {"all-reduce"}, collectives
            p = jax.tree.map(jnp.copy, params)
            new_params, _, metrics = sft_step(p, opt.init(p), batch, jnp.float32(1), **kw)
            results[k] = (jax.tree.leaves(new_params), metrics)
    for k in (2, 4):
        np.testing.assert_allclose(float(results[k][1]["loss"]), float(results[1][1]["loss"]), rtol=1e-5)
        for a, b in zip(results[k][0], results[1][0]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)  # Adam steps are ~1e-3


def test_chunked_sft_loss_equals_the_full_one_and_negative_chunks_are_refused():
    """train.logits_chunk computes the same loss, accuracy and gradients without [B, T, V]
    logits (a chunk that does not divide T included)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from arpo_jax.models import create_model, get_preset
    from arpo_jax.training.sft import sft_loss
    from arpo_jax.training.sft_config import SFTTrainConfig

    cfg = get_preset("qwen2.5-0.5b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)
    graphdef, params = nnx.split(create_model(cfg, seed=1))
    rng = np.random.default_rng(4)
    lengths = np.array([13, 6, 9])
    attn = (np.arange(13)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = attn * (rng.random((3, 13)) < 0.7)
    batch = {"tokens": jnp.asarray(rng.integers(0, 64, (3, 13)), jnp.int32), "attention_mask": jnp.asarray(attn),
             "loss_mask": jnp.asarray(loss_mask, jnp.float32)}

    def run(chunk):
        fn = lambda p: (lambda o: (o.loss_sum, o))(sft_loss(nnx.merge(graphdef, p), batch, chunk))  # noqa: E731
        (_, out), grads = jax.value_and_grad(fn, has_aux=True)(params)
        return out, jax.tree.leaves(grads)

    full, g_full = run(0)
    for chunk in (5, 4):  # T - 1 = 12: 5 leaves a padded last chunk
        out, g = run(chunk)
        np.testing.assert_allclose(float(out.loss_sum), float(full.loss_sum), rtol=1e-6)
        assert float(out.stats["correct"]) == float(full.stats["correct"])
        assert float(out.denominator) == loss_mask[:, 1:].sum()
        for a, b in zip(g, g_full):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="train.logits_chunk must be >= 0, got -1"):
        SFTTrainConfig(logits_chunk=-1)


def test_packed_sft_loss_and_gradients_equal_the_padded_rows():
    """data.pack: examples packed back to back (each attending only to itself) give the loss,
    accuracy, token count and gradients of the same examples one per padded row."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from arpo_jax.data.sft_data import SFTExample
    from arpo_jax.data.sft_loader import collate, collate_packed
    from arpo_jax.models import create_model, get_preset
    from arpo_jax.training.sft import sft_loss

    cfg = get_preset("qwen2.5-0.5b", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)
    graphdef, params = nnx.split(create_model(cfg, seed=3))
    rng = np.random.default_rng(5)
    exs = [SFTExample(f"e{i}", rng.integers(1, 64, n).astype(np.int32), (rng.random(n) < 0.6).astype(np.int8))
           for i, n in enumerate([7, 11, 5, 9, 12])]
    for ex in exs:
        ex.loss_mask[0] = 0  # a first token is never a target (no predecessor)
    packed = collate_packed([exs[:3], exs[3:]], 24, pad_id=0)  # rows of 23 and 21 real tokens
    padded = collate(exs, 12, pad_id=0)
    assert packed["key_end"][0, :8].tolist() == [7] * 7 + [18] and packed["positions"][0, 7] == 0

    def run(arrays):
        batch = {k: jnp.asarray(v) for k, v in arrays.items()}
        fn = lambda p: (lambda o: (o.loss_sum, o))(sft_loss(nnx.merge(graphdef, p), batch))  # noqa: E731
        (_, out), grads = jax.value_and_grad(fn, has_aux=True)(params)
        return out, jax.tree.leaves(grads)

    a, ga = run(packed)
    b, gb = run(padded)
    assert float(a.denominator) == float(b.denominator) == sum(int(e.loss_mask[1:].sum()) for e in exs)
    np.testing.assert_allclose(float(a.loss_sum), float(b.loss_sum), rtol=1e-5)
    assert float(a.stats["correct"]) == float(b.stats["correct"])
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
