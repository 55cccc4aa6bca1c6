"""The byte counts behind ``arpo-jax plan`` (``apps.plan``; its docstring states the formulas).

``resolve_model_config`` finds the ``ModelConfig`` a run would use, ``abstract_mesh`` the mesh
it would run on (no devices needed), and ``Estimate`` computes every per-device component for
one RL config on that mesh: the exact ones from abstract arrays and the real partition rules,
the activation and transient estimates from the formulas, and the phases for any slot count.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding

from arpo_jax.models.config import ModelConfig, get_preset
from arpo_jax.models.sharding import BATCH, MESH_AXES, fit_spec, param_spec
from arpo_jax.models.transformer import Transformer
from arpo_jax.sampling.config import SamplingConfig, bucket, prefill_length
from arpo_jax.sampling.state import init_state, state_shardings
from arpo_jax.training.rl_config import RLConfig
from arpo_jax.training.update import make_optimizer

ATT_BYTES_FP32 = 10  # per attention score: fp32 scores + fp32 softmax + 2 (select / cotangent share)
LOGIT_BYTES = 13  # per logit: fp32 logits, probabilities, cotangent + bool finite mask
SAMPLE_BYTES = 16  # per decode logit: logits and the sampling/entropy temporaries (fp32)


# ----------------------------------------------------------------------------- inputs
def _config_from_path(path: Path) -> tuple[ModelConfig, str]:
    if (path / "arpo_config.json").is_file():
        return ModelConfig(**json.loads((path / "arpo_config.json").read_text())), f"{path}/arpo_config.json"
    if (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
        dt = raw.get("torch_dtype") or raw.get("dtype")
        dt = dt if dt in ("float32", "bfloat16") else "float32"
        return ModelConfig.from_hf_config(raw, param_dtype=dt, dtype=dt), f"{path}/config.json"
    try:
        mcfg = get_preset(path.name)
    except KeyError:
        raise FileNotFoundError(f"model.path {str(path)!r} does not exist and its name is not a preset; "
                                "pass --preset") from None
    mcfg = mcfg.replace(param_dtype="bfloat16", dtype="bfloat16")  # what HF Qwen/Llama checkpoints store
    return mcfg, f"preset {path.name!r} (model.path absent)"


def resolve_model_config(cfg: RLConfig, preset: str | None = None) -> tuple[ModelConfig, str]:
    """The ``ModelConfig`` the run would use and where it came from (checkpoint config, preset,
    or the preset named like a missing ``model.path``, e.g. ``checkpoints/Qwen2.5-7B-Instruct``)."""
    m = cfg.model
    if preset:
        mcfg, source = get_preset(preset), f"preset {preset!r}"
    elif m.path:
        mcfg, source = _config_from_path(Path(m.path))
    else:
        try:
            mcfg = get_preset(m.preset, **dict(m.config)) if m.preset else ModelConfig(**dict(m.config))
        except TypeError as e:
            raise ValueError(f"model.config: {e}") from None
        source = f"preset {m.preset!r}" if m.preset else "model.config"
    kw = {k: getattr(m, k) for k in ("param_dtype", "dtype") if getattr(m, k)}
    if "param_dtype" in kw and "dtype" not in kw and m.path:
        kw["dtype"] = kw["param_dtype"]  # load_hf computes in the storage dtype unless told
    return mcfg.replace(remat=m.remat, **kw), source


def abstract_mesh(shape: tuple[int, ...], devices: int) -> AbstractMesh:
    """The (data, fsdp, tensor) mesh ``make_mesh`` would build on ``devices`` devices."""
    shape = list(shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if shape.count(-1) > 1 or devices % known:
            raise ValueError(f"model.mesh {tuple(shape)} does not resolve on {devices} devices")
        shape[shape.index(-1)] = devices // known
    if math.prod(shape) > devices:
        raise ValueError(f"model.mesh {tuple(shape)} needs {math.prod(shape)} devices, planning for {devices} "
                         "(pass --devices)")
    return AbstractMesh(tuple(shape), MESH_AXES)


@functools.lru_cache(maxsize=8)
def abstract_params(mcfg: ModelConfig):
    """The model's parameter ``nnx.State`` as ``ShapeDtypeStruct``s (traced once per config)."""
    return nnx.state(nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0))))


def shard_bytes(tree, shardings) -> int:
    """Bytes one device holds of ``tree`` (abstract arrays) laid out by ``shardings``."""
    leaves, shards = jax.tree.leaves(tree), jax.tree.leaves(shardings)
    return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shards))


def param_shardings(tree, mesh):
    """``NamedSharding`` of every leaf by the parameter rules (params, grads, optimizer state)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: NamedSharding(mesh, param_spec(p, x.shape, mesh)), tree)


def local_dim(dim: int, axis: str, mesh) -> int:
    """A dimension's size per device when split over ``axis`` (whole when the axis does not divide it)."""
    return dim // mesh.shape[axis] if dim % mesh.shape[axis] == 0 else dim


def rows_per_device(rows: int, mesh) -> int:
    """Rows of a batch one device holds (rows split over data × fsdp as far as they divide)."""
    spec = fit_spec((BATCH,), (rows,), mesh)
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],) if spec[0] else ()
    return rows // math.prod(mesh.shape[a] for a in axes)


# ------------------------------------------------------------------------- estimate
class Estimate:
    """Per-device bytes of ``cfg`` for ``mcfg`` on ``mesh`` (rollouts on ``ro_mesh``, one per host).

    Attributes: the exact ``p_bytes`` / ``o_bytes`` / ``ro_p_bytes`` (params, optimizer state,
    each host's rollout copy), the update's shapes (``seq``, ``micro_rows``, ``num_micro``,
    ``b`` rows per device, logits ``chunk``) and ``acts`` / ``grads`` / ``logits``, the scoring
    pass's ``score_acts``, the gathered weights; ``phases(slots)`` adds the KV cache and the
    rollout transients for a slot count.
    """

    def __init__(self, cfg: RLConfig, mcfg: ModelConfig, mesh, ro_mesh, hosts: int, *, logits_chunk: int | None = None,
                 score_rows: int | None = None, cache_during_update: bool = True):
        self.cfg, self.mcfg, self.mesh, self.ro_mesh, self.hosts = cfg, mcfg, mesh, ro_mesh, hosts
        self.cache_during_update = cache_during_update
        self.notes: list[str] = []
        self._exact_bytes()
        ro, data = cfg.rollout, cfg.data
        self.per_prompt, self.capacity = ro.total_rollouts, ro.slot_capacity
        self.num_slots = ro.num_slots or data.prompts_per_step * self.per_prompt
        if self.num_slots % hosts:
            raise ValueError(f"rollout.num_slots ({self.num_slots}) must split evenly over the {hosts} hosts")
        self.dt = np.dtype(mcfg.jnp_dtype).itemsize
        self.nd, self.kd, self.fd, self.vd = (local_dim(x, "tensor", mesh) for x in (
            mcfg.num_heads, mcfg.num_kv_heads, mcfg.intermediate_size, mcfg.vocab_size))
        self._update_bytes(logits_chunk)
        self._score_bytes(score_rows)
        self.gathered, self.ro_gathered = self._gathered_bytes(mesh), self._gathered_bytes(ro_mesh)
        self._rollout_shapes()
        self.ref = self.p_bytes if cfg.loss.kl_coef > 0 else 0
        self.static = self.p_bytes + self.o_bytes + self.ref

    def _exact_bytes(self) -> None:
        mcfg, mesh = self.mcfg, self.mesh
        abs_params = abstract_params(mcfg.replace(remat=False))
        self.p_bytes = shard_bytes(abs_params, param_shardings(abs_params, mesh))
        abs_opt = jax.eval_shape(make_optimizer(self.cfg.optimizer).init, abs_params)
        self.o_bytes = shard_bytes(abs_opt, param_shardings(abs_opt, mesh))
        self.ro_p_bytes = 0  # the rollout's copy (local_copy): each host's, or fp32 master weights in the compute dtype
        if self.hosts > 1 or mcfg.dtype != mcfg.param_dtype:
            ro_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, mcfg.jnp_dtype), abs_params)
            self.ro_p_bytes = shard_bytes(ro_params, param_shardings(ro_params, self.ro_mesh))

    def _layer_bytes(self, rows: int, norm_bytes: int) -> int:
        """One layer's kept activations for ``rows`` rows per device, besides attention scores."""
        mcfg, dt, seq = self.mcfg, self.dt, self.seq
        d, h = mcfg.hidden_size, mcfg.head_dim
        return rows * seq * ((norm_bytes + 4 * dt) * d + 3 * dt * self.fd + 3 * dt * (self.nd + 2 * self.kd) * h)

    def _update_rows(self) -> int:
        """Rows of an update micro-batch and their length ``self.seq``: one row per trajectory of
        max_prompt + max_response tokens, or with ``train.packing`` one packed row per prompt tree
        of max_prompt + M·max_response tokens (worst case: forks share nothing but the prompt)."""
        ro, tr = self.cfg.rollout, self.cfg.train
        self.packed = bool(getattr(tr, "packing", False))
        if not self.packed:
            self.seq = ro.max_prompt_tokens + ro.max_response_tokens
            return self.micro_rows
        self.seq = ro.max_prompt_tokens + self.per_prompt * ro.max_response_tokens
        return -(-self.micro_rows // self.per_prompt)

    def _attention_bytes(self, rows: int, score_bytes: int) -> tuple[int, int]:
        """(scores of one layer, mask) of ``rows`` rows per device: Nd·T² scores and a T² bool
        mask (``attention_impl`` reference), or one 512 × 512 block per head with the per-query
        softmax statistics, and the key_end vector (blockwise kernels: no T² term)."""
        seq, impl = self.seq, getattr(self.mcfg, "attention_impl", "reference")
        if impl == "reference":
            return rows * self.nd * seq * seq * score_bytes, rows * seq * seq
        blk = min(seq, 512)
        return rows * self.nd * (blk * blk * score_bytes + seq * 8), rows * seq * 4

    def _update_bytes(self, logits_chunk: int | None) -> None:
        """The update's micro-batch activations and gradients."""
        cfg, mcfg, dt = self.cfg, self.mcfg, self.dt
        tr, data = cfg.train, cfg.data
        self.mini_rows = -(-data.prompts_per_step * self.per_prompt // tr.mini_batches)
        self.micro_rows = min(tr.micro_batch_size or self.mini_rows, self.mini_rows)
        self.num_micro = -(-self.mini_rows // self.micro_rows)
        self.update_rows = self._update_rows()
        self.b = b = rows_per_device(self.update_rows, self.mesh)
        seq = self.seq
        self.chunk = logits_chunk if logits_chunk is not None else getattr(tr, "logits_chunk", 0)
        self.c = min(self.chunk, seq) if self.chunk else seq
        scores, mask = self._attention_bytes(b, ATT_BYTES_FP32 + dt)
        per_layer = self._layer_bytes(b, 16) + scores
        self.logits = b * self.c * self.vd * LOGIT_BYTES
        if mcfg.remat:
            self.acts = mcfg.num_layers * b * seq * mcfg.hidden_size * dt + per_layer + mask + self.logits
        else:
            self.acts = mcfg.num_layers * per_layer + mask + self.logits
        if self.num_micro == 2:
            self.acts *= 2
            self.notes.append("2 micro-batches: XLA runs both forward passes at once (activations counted twice); "
                              "use 1 or >= 3 micro-batches")
        self.grads = self.p_bytes * (2 if self.num_micro > 1 else 1)

    def _score_bytes(self, score_rows: int | None) -> None:
        """The scoring forward pass (no gradients: one layer's working set at a time)."""
        cfg = self.cfg
        self.scoring = cfg.train.old_logprobs == "recompute" or cfg.loss.kl_coef > 0
        self.score_rows = min(score_rows or self.micro_rows, self.mini_rows)
        rows = -(-self.score_rows // self.per_prompt) if self.packed else self.score_rows
        self.bs = bs = rows_per_device(rows, self.mesh)
        self.score_acts = 0
        if self.scoring:
            self.score_acts = (self._layer_bytes(bs, 8) + sum(self._attention_bytes(bs, 8 + self.dt))
                               + bs * self.c * self.vd * LOGIT_BYTES)

    def _gathered_bytes(self, m) -> int:
        """Weights all-gathered for compute with fsdp > 1: two layers and the embedding / lm_head."""
        mcfg = self.mcfg
        if m.shape["fsdp"] == 1:
            return 0
        d = mcfg.hidden_size
        embeddings = mcfg.vocab_size * d * (1 if mcfg.tie_word_embeddings else 2)
        layer_params = (mcfg.num_params() - embeddings) // mcfg.num_layers
        return (2 * layer_params + mcfg.vocab_size * d) * self.dt // m.shape["tensor"]

    def _rollout_shapes(self) -> None:
        cfg, mcfg, ro_mesh = self.cfg, self.mcfg, self.ro_mesh
        ro, data, scfg = cfg.rollout, cfg.data, SamplingConfig()
        self.r_nd, r_kd, self.r_vd, self.r_fd = (local_dim(x, "tensor", ro_mesh) for x in (
            mcfg.num_heads, mcfg.num_kv_heads, mcfg.vocab_size, mcfg.intermediate_size))
        self.cache_row = 2 * mcfg.num_layers * r_kd * mcfg.head_dim * self.dt  # one token of one slot, per device
        cap = self.capacity
        self.win = 1 << (cap - 1).bit_length() - 1 if cap > scfg.min_window else 0  # largest bucket < capacity
        self.fresh = data.prompts_per_step * (self.per_prompt if ro.policy == "trajectory" else ro.initial_rollouts)
        self.t_w = prefill_length(ro.max_prompt_tokens - 1, scfg, cap)
        self.piece = min(self.t_w, scfg.prefill_chunk)

    def cache_bytes(self, slots: int) -> int:
        """One host's share of ``slots`` sampler slots (KV cache), on its rollout mesh."""
        st = jax.eval_shape(lambda: init_state(self.mcfg, slots // self.hosts, self.capacity))
        return shard_bytes(st, state_shardings(st, self.ro_mesh))

    def prefill_rows(self, slots: int) -> int:
        """Rows of one insert of every fresh sample of a host (bucketed)."""
        slots, host_fresh = slots // self.hosts, -(-self.fresh // self.hosts)
        return bucket(min(slots, host_fresh), 1, slots)

    def transients(self, slots: int) -> tuple[int, int]:
        """(decode, prefill) transients of one host's share of ``slots``."""
        mcfg, ro_mesh, dt = self.mcfg, self.ro_mesh, self.dt
        s_dev = rows_per_device(slots // self.hosts, ro_mesh)
        window_copy = max(self.win * (mcfg.num_layers + 1), self.capacity) * self.cache_row // mcfg.num_layers
        decode = s_dev * (window_copy + self.r_vd * SAMPLE_BYTES + self.r_nd * self.win * 8)
        n_dev = rows_per_device(self.prefill_rows(slots), ro_mesh)
        d, t_w, piece = mcfg.hidden_size, self.t_w, self.piece
        prefill = n_dev * (t_w * self.cache_row + self.r_nd * piece * t_w * (8 + dt)
                           + piece * ((8 + 4 * dt) * d + 3 * dt * self.r_fd))
        return decode, prefill

    def phases(self, slots: int) -> tuple[dict[str, int], dict[str, int]]:
        """(items, phases) per device with ``slots`` sampler slots."""
        kv = self.cache_bytes(slots)
        decode, prefill = self.transients(slots)
        items = dict(params=self.p_bytes, opt_state=self.o_bytes, reference=self.ref, kv_cache=kv,
                     rollout_params=self.ro_p_bytes, grads=self.grads, activations=self.acts,
                     score_activations=self.score_acts, gathered_weights=max(self.gathered, self.ro_gathered),
                     decode_transient=decode, prefill_transient=prefill)
        ph = dict(rollout=self.static + kv + self.ro_p_bytes + max(decode, prefill) + self.ro_gathered,
                  update=self.static + (kv if self.cache_during_update else 0) + self.grads + self.acts
                  + self.gathered)
        if self.scoring:
            ph["score"] = self.static + kv + self.score_acts + self.gathered
        return items, ph
