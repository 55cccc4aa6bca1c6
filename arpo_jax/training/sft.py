"""Supervised fine-tuning (the cold start before ARPO) on multi-turn tool traces.

``run_sft(cfg)`` trains with the token-mean cross-entropy over trained tokens (assistant
text; tool results masked), accumulated exactly over micro-batches as ``(loss_sum,
denominator)``, with the project's AdamW (``make_optimizer``). ``SFTRunner`` is SFT's part of
the one training loop (``training.loop``: checkpoints, exact resume with ``train.resume=auto``,
non-finite skips, ``TrainingDiverged``, SIGTERM, exports, logging, ``status.json``): the traces,
their loader, the step and the held-out loss (``train.eval_every``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from arpo_jax.algorithms.accumulation import accumulate_gradients, split_micro_batches
from arpo_jax.algorithms.losses import PolicyLossOutput
from arpo_jax.data.tokenizer import load_tokenizer
from arpo_jax.models import make_mesh
from arpo_jax.models.sharding import rows_sharding
from arpo_jax.training.distributed import global_batch, process_rows
from arpo_jax.training.loop import TrainTask
from arpo_jax.training.sft_config import SFTConfig
from arpo_jax.data.sft_data import load_sft_examples
from arpo_jax.data.sft_loader import SFTLoader
from arpo_jax.training.state import TrainState
from arpo_jax.training.update import OptimizerConfig, apply_if_finite, cached_optimizer, lr_schedule, map_time_chunks

__all__ = ["SFTConfig", "SFTRunner", "learning_rate", "run_sft", "sft_eval_step", "sft_loss", "sft_step"]


# ---------------------------------------------------------------------------- loss and step
def sft_loss(model, batch: dict, logits_chunk: int = 0) -> PolicyLossOutput:
    """Cross-entropy of one (micro-)batch as (loss_sum, denominator, stats).

    batch: tokens int32 [B, T], attention_mask int32 [B, T], loss_mask float32 [B, T]; packed
    rows add positions and key_end int32 [B, T] (the interval mask: each example attends to
    itself). Token t is predicted from tokens[:t] and counts when loss_mask[t] > 0. ``logits_chunk`` > 0
    computes the fp32 logits that many positions at a time (``map_time_chunks``).
    """
    targets = batch["tokens"][:, 1:]  # [B, T-1]
    mask = batch["loss_mask"][:, 1:].astype(jnp.float32)  # [B, T-1]

    def nll_and_correct(logits, y):  # [B, C, V], [B, C] -> nll [B, C], correct [B, C]
        logits = logits.astype(jnp.float32)
        nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        return nll, (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)

    masks = dict(positions=batch["positions"], key_end=batch["key_end"]) if "key_end" in batch else \
        dict(attention_mask=batch["attention_mask"])
    if logits_chunk:
        hidden = model(batch["tokens"], **masks, return_hidden=True)[:, :-1]
        nll, correct = map_time_chunks(lambda h, y: nll_and_correct(model.logits(h), y), hidden, targets, logits_chunk)
    else:  # the plain forward: XLA fuses it differently, and training is sensitive to the rounding
        nll, correct = nll_and_correct(model(batch["tokens"], **masks)[:, :-1], targets)
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


# ------------------------------------------------------------------------------ the task
def _device_batch(arrays: dict, mesh) -> dict:
    """Host rows [B, T] → global arrays with rows over (data, fsdp) (this process's share of them)."""
    b = arrays["tokens"].shape[0]
    sharding = rows_sharding(mesh, 2, b)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in arrays.items()}
    rows = process_rows(b)
    return global_batch({k: v[rows] for k, v in arrays.items()}, sharding)


class SFTRunner(TrainTask):
    """SFT's part of the training loop: the traces and their loader, ``sft_step``, the held-out
    loss; ``run()`` runs it (``training.loop``)."""

    config_key = "sft_config"

    def __init__(self, cfg: SFTConfig):
        self.config, t, d = cfg, cfg.train, cfg.data
        self.tokenizer = load_tokenizer(cfg.model.tokenizer_dir)
        self.examples, self.counts = self._load(d.train_files)
        self.loader = SFTLoader(self.examples, batch_size=t.batch_size, max_len=t.max_len, seed=t.seed,
                                shuffle=d.shuffle, bucket_window=d.bucket_window, min_bucket=d.min_bucket,
                                pad_id=self.tokenizer.pad_token_id, pack=d.pack, pack_window=d.pack_window)
        self.eval_loader = None
        if d.eval_files and t.eval_every:
            self.eval_loader = SFTLoader(self._load(d.eval_files)[0], batch_size=1, max_len=t.max_len,
                                         min_bucket=d.min_bucket, pad_id=self.tokenizer.pad_token_id)
        self.total_steps = t.steps or t.epochs * self.loader.batches_per_epoch
        self.opt_cfg = cfg.optimizer
        if self.opt_cfg.schedule in ("cosine", "wsd") and self.opt_cfg.total_steps <= 1:
            self.opt_cfg = dataclasses.replace(self.opt_cfg, total_steps=self.total_steps)
        self.optimizer = cached_optimizer(self.opt_cfg)
        self.mesh = make_mesh(cfg.model.mesh)

    def _load(self, files: list[str]):
        d = self.config.data
        return load_sft_examples(files, self.tokenizer, max_len=self.config.train.max_len, fmt=d.format,
                                 lenient=d.lenient, truncate=d.truncate, tool_result_pattern=d.tool_result_pattern,
                                 template_kwargs=d.template_kwargs)

    def start_lines(self, resumed: bool) -> list[str]:
        if resumed:
            return []
        c = self.counts
        return [f"SFT: {c['examples']} examples ({c['tokens']} tokens, {c['truncated']} truncated, "
                f"{c['dropped_long'] + c['dropped_empty']} dropped), {self.loader.batches_per_epoch} batches/epoch"
                f"{' (packed rows)' if self.config.data.pack else ''}, "
                f"{self.total_steps} steps"]

    def step(self, state: TrainState, loss_scale: jax.Array, updates_done: int) -> dict[str, Any]:
        """The next batch's ``sft_step``; metrics with the learning rate, epoch and throughput."""
        t = self.config.train
        t0 = time.perf_counter()
        epoch = self.loader.epoch_float()
        batch = self.loader.next_batch()
        lr = learning_rate(self.opt_cfg, updates_done)
        state.params, state.opt_state, metrics = sft_step(
            state.params, state.opt_state, _device_batch(batch.arrays(), self.mesh), loss_scale,
            graphdef=state.graphdef, optimizer=self.optimizer, num_micro=t.micro_batches, logits_chunk=t.logits_chunk)
        metrics = jax.device_get(metrics)
        dt = time.perf_counter() - t0
        return dict(metrics, lr=lr, epoch=epoch, step_time=dt,
                    tokens_per_sec=float(batch.attention_mask.sum()) / dt, seq_len=batch.tokens.shape[1])

    def validation_due(self, step: int) -> bool:
        return self.eval_loader is not None and step > 0 and step % self.config.train.eval_every == 0

    def validate(self, state: TrainState) -> dict[str, float]:
        """Token-mean loss and accuracy over the eval traces (``eval/...``)."""
        t = self.config.train
        loss = tokens = correct = 0.0
        for arrays in self.eval_loader.eval_batches(t.eval_batch_size or t.batch_size):
            s, n, c = jax.device_get(sft_eval_step(state.params, _device_batch(arrays, self.mesh),
                                                   graphdef=state.graphdef, logits_chunk=t.logits_chunk))
            loss, tokens, correct = loss + float(s), tokens + float(n), correct + float(c)
        return {"eval/loss": loss / max(tokens, 1e-8), "eval/accuracy": correct / max(tokens, 1e-8),
                "eval/num_tokens": tokens}

    def export_sample(self) -> str:
        return self.tokenizer.decode(self.examples[0].tokens)

    def summary(self, last: dict[str, Any]) -> dict[str, Any]:
        return {"loss": last.get("loss"), "data": self.counts}


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Runs (or resumes) SFT; returns {"status": "finished"|"preempted", "step", "loss", ...}.

    Raises ``TrainingDiverged`` (after writing a checkpoint) when too many consecutive
    updates are non-finite.
    """
    return SFTRunner(cfg).run()
