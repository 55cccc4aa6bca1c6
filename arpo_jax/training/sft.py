"""Supervised fine-tuning (the cold start before ARPO) on multi-turn tool traces.

``run_sft(cfg)`` trains with the token-mean cross-entropy over trained tokens (assistant
text; tool results masked), accumulated exactly over micro-batches as ``(loss_sum,
denominator)``, with the project's AdamW (``make_optimizer``). Orbax checkpoints hold the
parameters, optimizer state, RNG key, data position and skip counters, so a killed run resumed
with ``train.resume=auto`` repeats the uninterrupted run's steps bit for bit. Non-finite updates
are skipped and counted; ``train.max_consecutive_skips`` in a row stop the run with a final
checkpoint (``TrainingDiverged``). SIGTERM writes a final checkpoint and returns.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from arpo_jax.algorithms.accumulation import accumulate_gradients, split_micro_batches
from arpo_jax.algorithms.losses import PolicyLossOutput
from arpo_jax.config import to_dict
from arpo_jax.models import ModelConfig, Transformer, create_model, get_preset, load_hf, make_mesh, save_hf
from arpo_jax.models.sharding import rows_sharding, state_shardings
from arpo_jax.training.checkpoint import Checkpointer, resolve_resume
from arpo_jax.training.distributed import global_batch, is_main_process, process_rows
from arpo_jax.training.metrics_log import MetricsLogger, to_python
from arpo_jax.training.sft_config import SFTConfig
from arpo_jax.training.sft_data import load_sft_examples
from arpo_jax.training.sft_loader import SFTLoader
from arpo_jax.training.signals import PreemptionHandler, SkipGuard, TrainingDiverged
from arpo_jax.training.update import (OptimizerConfig, apply_if_finite, cached_optimizer, lr_schedule,
                                     map_time_chunks)

LOG_KEYS = ("loss", "grad_norm", "lr", "accuracy", "num_tokens", "skipped", "skipped_total", "epoch")


# ---------------------------------------------------------------------------- loss and step
def sft_loss(model, batch: dict, logits_chunk: int = 0) -> PolicyLossOutput:
    """Cross-entropy of one (micro-)batch as (loss_sum, denominator, stats).

    batch: tokens int32 [B, T], attention_mask int32 [B, T], loss_mask float32 [B, T];
    token t is predicted from tokens[:t] and counts when loss_mask[t] > 0. ``logits_chunk`` > 0
    computes the fp32 logits that many positions at a time (``map_time_chunks``).
    """
    targets = batch["tokens"][:, 1:]  # [B, T-1]
    mask = batch["loss_mask"][:, 1:].astype(jnp.float32)  # [B, T-1]

    def nll_and_correct(logits, y):  # [B, C, V], [B, C] -> nll [B, C], correct [B, C]
        logits = logits.astype(jnp.float32)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return nll, (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)

    if logits_chunk:
        hidden = model(batch["tokens"], attention_mask=batch["attention_mask"], return_hidden=True)[:, :-1]
        nll, correct = map_time_chunks(lambda h, y: nll_and_correct(model.logits(h), y), hidden, targets, logits_chunk)
    else:  # the plain forward: XLA fuses it differently, and training is sensitive to the rounding
        nll, correct = nll_and_correct(model(batch["tokens"], attention_mask=batch["attention_mask"])[:, :-1], targets)
    denom = jnp.sum(mask)
    return PolicyLossOutput(jnp.sum(nll * mask), denom, {"num_tokens": denom, "correct": jnp.sum(correct * mask)})


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "num_micro", "logits_chunk"),
                   donate_argnames=("params", "opt_state"))
def sft_step(params, opt_state, batch: dict, loss_scale, *, graphdef, optimizer, num_micro: int = 1,
             logits_chunk: int = 0):
    """One AdamW step on ``batch`` → (params, opt_state, metrics); non-finite → unchanged, skipped=1.

    loss_scale: float32 [] multiplying the loss (1.0; NaN only to test the safety path).
    """
    def loss_fn(p, mb):
        out = sft_loss(nnx.merge(graphdef, p), mb, logits_chunk)
        return out._replace(loss_sum=out.loss_sum * loss_scale)

    grads, out = accumulate_gradients(loss_fn, params, split_micro_batches(batch, num_micro))
    params, opt_state, grad_norm, finite = apply_if_finite(optimizer, params, opt_state, grads, out.loss_sum)
    n = jnp.maximum(out.denominator, 1e-8)
    metrics = dict(loss=out.loss_sum / n, grad_norm=grad_norm, accuracy=out.stats["correct"] / n,
                   num_tokens=out.denominator, skipped=(~finite).astype(jnp.int32))
    return params, opt_state, metrics


@functools.partial(jax.jit, static_argnames=("graphdef", "logits_chunk"))
def sft_eval_step(params, batch: dict, *, graphdef, logits_chunk: int = 0):
    """(loss_sum, num_tokens, correct) of a batch, for an exact token mean over an eval set."""
    out = sft_loss(nnx.merge(graphdef, params), batch, logits_chunk)
    return out.loss_sum, out.denominator, out.stats["correct"]


def learning_rate(cfg: OptimizerConfig, count: int) -> float:
    """The learning rate ``make_optimizer(cfg)`` applies at update ``count`` (0-based)."""
    return float(lr_schedule(cfg)(count))


# ------------------------------------------------------------------------- model and state
def load_tokenizer(cfg: SFTConfig):
    """``AutoTokenizer`` from ``model.tokenizer`` (default ``model.path``); never from the hub."""
    from transformers import AutoTokenizer

    path = cfg.model.tokenizer or cfg.model.path
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory {path!r} does not exist (hub names are not fetched)")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_exported_tokenizer(tokenizer, path: str | Path, sample: str) -> str | None:
    """A warning when ``AutoTokenizer`` reloads the exported tokenizer so that it tokenizes
    ``sample`` differently (e.g. transformers picking the architecture's own tokenizer class
    for a custom tokenizer saved beside a qwen2 config.json)."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(path))
    ids = [tok(sample, add_special_tokens=False)["input_ids"] for tok in (tokenizer, reloaded)]
    if ids[0] == ids[1]:
        return None
    return (f"warning: the tokenizer exported to {path} reloads as {type(reloaded).__name__} and tokenizes "
            f"differently from the training tokenizer ({type(tokenizer).__name__}); load it with that class")


def model_config(cfg: SFTConfig, tokenizer) -> ModelConfig | None:
    """The random-init ``ModelConfig`` (None when the model is loaded from ``model.path``)."""
    m = cfg.model
    if m.path:
        return None
    fields = dict(m.config)
    fields.setdefault("vocab_size", len(tokenizer))
    for k in ("dtype", "param_dtype"):
        if getattr(m, k):
            fields[k] = getattr(m, k)
    fields["remat"] = m.remat
    try:
        return get_preset(m.preset, **fields) if m.preset else ModelConfig(**fields)
    except TypeError as e:
        raise ValueError(f"model.config: {e}") from None


def build_model(cfg: SFTConfig, tokenizer, mesh) -> tuple[Transformer, ModelConfig]:
    """A fresh model: loaded from ``model.path`` or randomly initialised, sharded on ``mesh``."""
    m = cfg.model
    if m.path:
        from arpo_jax.models.native_io import is_native_checkpoint, load_native

        if is_native_checkpoint(m.path):
            model, mcfg = load_native(m.path, mesh=mesh)
        else:
            model, mcfg = load_hf(m.path, dtype=m.dtype, param_dtype=m.param_dtype, mesh=mesh)
        if m.remat:  # only Transformer.__call__ reads cfg.remat
            model.cfg = mcfg = mcfg.replace(remat=True)
        return model, mcfg
    mcfg = model_config(cfg, tokenizer)
    if mesh.size > 1:
        return create_model(mcfg, seed=m.init_seed, mesh=mesh), mcfg
    # One device: eager init (its ops are cached across runs) instead of compiling the initializer.
    model = create_model(mcfg, seed=m.init_seed)
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh))), mcfg


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_train_state(mcfg: ModelConfig, optimizer, mesh) -> tuple[Any, dict]:
    """(graphdef, abstract {"params", "opt_state", "rng"}) with the target shardings, for restore."""
    graphdef, abs_params = nnx.split(nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0))))
    abs_params = _with_shardings(abs_params, state_shardings(abs_params, mesh))
    abs_opt = jax.eval_shape(optimizer.init, abs_params)
    abs_opt = _with_shardings(abs_opt, state_shardings(abs_opt, mesh))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))
    return graphdef, {"params": abs_params, "opt_state": abs_opt, "rng": rng}


def _device_batch(arrays: dict, mesh) -> dict:
    b = arrays["tokens"].shape[0]
    sharding = rows_sharding(mesh, 2, b)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in arrays.items()}
    rows = process_rows(b)
    return global_batch({k: v[rows] for k, v in arrays.items()}, sharding)


def _evaluate(loader: SFTLoader, params, graphdef, batch_size: int, mesh, logits_chunk: int) -> dict[str, float]:
    loss = tokens = correct = 0.0
    for arrays in loader.eval_batches(batch_size):
        s, n, c = jax.device_get(sft_eval_step(params, _device_batch(arrays, mesh), graphdef=graphdef,
                                               logits_chunk=logits_chunk))
        loss, tokens, correct = loss + float(s), tokens + float(n), correct + float(c)
    return {"eval/loss": loss / max(tokens, 1e-8), "eval/accuracy": correct / max(tokens, 1e-8),
            "eval/num_tokens": tokens}


@dataclasses.dataclass
class TrainState:
    """What the loop starts from: a fresh model or a restored checkpoint."""

    graphdef: Any
    params: Any  # nnx.State, sharded
    opt_state: Any
    rng: jax.Array  # uint32 [2] key data
    step: int
    mcfg: ModelConfig


def init_or_restore(cfg: SFTConfig, tokenizer, optimizer, mesh, ckpt: Checkpointer, loader: SFTLoader,
                    guard: SkipGuard) -> TrainState:
    """Restores the checkpoint ``train.resume`` asks for (moving ``loader`` and ``guard`` to its
    position), or builds a fresh model and optimizer state when there is none."""
    resume = resolve_resume(cfg.train.resume, ckpt)
    if resume is None:
        model, mcfg = build_model(cfg, tokenizer, mesh)
        graphdef, params = nnx.split(model)
        opt_state = optimizer.init(params)
        opt_state = jax.device_put(opt_state, state_shardings(opt_state, mesh))
        return TrainState(graphdef, params, opt_state, jax.random.key_data(jax.random.key(cfg.train.seed)), 0, mcfg)
    holder = {}

    def target(meta):  # the abstract state (with shardings) of the checkpoint's own model config
        holder["mcfg"] = ModelConfig(**meta["model_config"])
        holder["graphdef"], abstract = abstract_train_state(holder["mcfg"], optimizer, mesh)
        return abstract

    restored = ckpt.restore(target, step=None if resume == -1 else resume)
    loader.set_position(restored.meta["data_position"])
    guard.load_state_dict(restored.meta.get("skips", {}))
    state = restored.state
    return TrainState(holder["graphdef"], state["params"], state["opt_state"], state["rng"], restored.step,
                      holder["mcfg"])


def _write_status(out_dir: Path, status: dict) -> None:
    if is_main_process():
        (out_dir / "status.json").write_text(json.dumps(status, indent=2))


# ------------------------------------------------------------------------------------ loop
def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Runs (or resumes) SFT; returns {"status": "finished"|"preempted", "step", "loss", ...}.

    Raises ``TrainingDiverged`` (after writing a checkpoint) when too many consecutive
    updates are non-finite.
    """
    t, out_dir = cfg.train, Path(cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg)
    enc = dict(truncate=cfg.data.truncate, tool_result_pattern=cfg.data.tool_result_pattern,
               template_kwargs=cfg.data.template_kwargs)
    examples, counts = load_sft_examples(cfg.data.train_files, tokenizer, max_len=t.max_len, fmt=cfg.data.format,
                                         lenient=cfg.data.lenient, **enc)
    loader = SFTLoader(examples, batch_size=t.batch_size, max_len=t.max_len, seed=t.seed, shuffle=cfg.data.shuffle,
                       bucket_window=cfg.data.bucket_window, min_bucket=cfg.data.min_bucket,
                       pad_id=tokenizer.pad_token_id)
    eval_loader = None
    if cfg.data.eval_files and t.eval_every:
        eval_examples, _ = load_sft_examples(cfg.data.eval_files, tokenizer, max_len=t.max_len, fmt=cfg.data.format,
                                             lenient=cfg.data.lenient, **enc)
        eval_loader = SFTLoader(eval_examples, batch_size=1, max_len=t.max_len, min_bucket=cfg.data.min_bucket,
                                pad_id=tokenizer.pad_token_id)
    total_steps = t.steps or t.epochs * loader.batches_per_epoch
    opt_cfg = cfg.optimizer
    if opt_cfg.schedule in ("cosine", "wsd") and opt_cfg.total_steps <= 1:
        opt_cfg = dataclasses.replace(opt_cfg, total_steps=total_steps)
    optimizer = cached_optimizer(opt_cfg)
    mesh = make_mesh(cfg.model.mesh)
    ckpt = Checkpointer(t.checkpoint_dir or out_dir / "checkpoints", keep=t.keep, async_save=t.async_checkpoint)
    guard = SkipGuard(t.max_consecutive_skips)

    st = init_or_restore(cfg, tokenizer, optimizer, mesh, ckpt, loader, guard)
    graphdef, mcfg = st.graphdef, st.mcfg
    params, opt_state, rng, step = st.params, st.opt_state, st.rng, st.step

    log = MetricsLogger(out_dir, total_steps=total_steps, start_step=step, jsonl=cfg.logging.jsonl,
                        tensorboard=cfg.logging.tensorboard, progress=cfg.logging.progress,
                        wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project,
                        run_name=cfg.logging.run_name, config=to_dict(cfg))
    if step:
        log.message(f"resumed from step {step} of {ckpt.directory} (data epoch {loader.position.epoch}, "
                    f"batch {loader.position.index})")
    else:
        log.message(f"SFT: {counts['examples']} examples ({counts['tokens']} tokens, {counts['truncated']} truncated, "
                    f"{counts['dropped_long'] + counts['dropped_empty']} dropped), "
                    f"{loader.batches_per_epoch} batches/epoch, {total_steps} steps")
    exported: list[str] = []
    export_root = Path(t.export_dir or out_dir / "hf")

    def save(wait: bool = False) -> None:
        meta = {"data_position": loader.position.to_dict(), "skips": guard.state_dict(),
                "model_config": dataclasses.asdict(mcfg), "sft_config": to_dict(cfg)}
        # rng: carried for loops that sample (SFT itself draws no random numbers)
        state = {"params": params, "opt_state": opt_state, "rng": rng}
        ckpt.save(step, state, meta, wait=wait)

    def export(name: str) -> None:
        path = save_hf(nnx.merge(graphdef, params), mcfg, export_root / name, tokenizer=tokenizer,
                       dtype=t.export_dtype)  # every process gathers; process 0 writes
        if is_main_process():
            exported.append(str(path))
            log.message(f"exported HF checkpoint to {path}")
            warning = check_exported_tokenizer(tokenizer, path, tokenizer.decode(examples[0].tokens))
            if warning:
                log.message(warning)

    status, last = "finished", {}
    try:
        with PreemptionHandler() as preempt:
            while step < total_steps:
                t0 = time.perf_counter()
                epoch = loader.epoch_float()
                batch = loader.next_batch()
                injected = t.debug_nan_step and t.debug_nan_step <= step + 1 < t.debug_nan_step + t.debug_nan_count
                scale = jnp.float32(np.nan if injected else 1.0)
                lr = learning_rate(opt_cfg, step - guard.total)
                params, opt_state, metrics = sft_step(params, opt_state, _device_batch(batch.arrays(), mesh), scale,
                                                      graphdef=graphdef, optimizer=optimizer,
                                                      num_micro=t.micro_batches, logits_chunk=t.logits_chunk)
                metrics = jax.device_get(metrics)
                step += 1
                guard.update(bool(metrics["skipped"]))
                dt = time.perf_counter() - t0
                last = dict(metrics, lr=lr, epoch=epoch, skipped_total=guard.total, step_time=dt,
                            tokens_per_sec=float(batch.attention_mask.sum()) / dt, seq_len=batch.tokens.shape[1])
                evaluated = eval_loader is not None and step % t.eval_every == 0
                if evaluated:
                    last.update(_evaluate(eval_loader, params, graphdef, t.eval_batch_size or t.batch_size, mesh,
                                          t.logits_chunk))
                if step % cfg.logging.every == 0 or metrics["skipped"] or step == total_steps or evaluated:
                    log.log(step, last)
                if metrics["skipped"]:
                    log.message(f"step {step}: non-finite loss or gradient, update skipped "
                                f"({guard.consecutive} in a row, {guard.total} in all)")
                if guard.tripped:
                    save(wait=True)
                    msg = guard.message(step, ckpt.directory)
                    log.message(msg)
                    _write_status(out_dir, {"status": "diverged", "step": step, "message": msg,
                                            "checkpoint_dir": ckpt.directory})
                    raise TrainingDiverged(msg)
                if t.save_every and step % t.save_every == 0:
                    save()
                if t.export_every and step % t.export_every == 0:
                    export(f"step_{step}")
                if t.debug_step_sleep:
                    time.sleep(t.debug_step_sleep)
                if preempt.requested and step < total_steps:
                    log.message(f"{preempt.signal_name} received: writing a final checkpoint at step {step} and "
                                f"stopping (resume with train.resume=auto)")
                    status = "preempted"
                    break
        save(wait=True)
        if status == "finished" and t.export_at_end:
            export("final")
    finally:
        log.close()
        ckpt.close()
    summary = to_python({"status": status, "step": step, "total_steps": total_steps, "loss": last.get("loss"),
                         "skipped_total": guard.total, "checkpoint_dir": ckpt.directory, "exported": exported,
                         "data": counts})
    _write_status(out_dir, summary)
    return summary
