"""Per-device memory plan of an RL config: ``arpo-jax plan CONFIG.yaml [key=value ...]``.

Exact (from the real partition rules on an ``AbstractMesh``, no devices needed):
  params      ``jax.eval_shape`` of the ``Transformer``, each leaf split by ``param_spec``.
  opt_state   ``jax.eval_shape(make_optimizer(cfg.optimizer).init, params)`` (AdamW: mu and
              nu in the parameter dtype, split like the parameters) and a step counter.
  kv_cache    the sampler's ``SamplerState`` (``init_state``) for ``rollout.num_slots`` slots
              (0: prompts_per_step × M) of ``rollout.slot_capacity`` tokens, in the compute
              dtype, split by ``sampling.state.state_shardings`` (slots over data×fsdp, kv heads
              over tensor); it stays allocated during the update (the rollout engine keeps its
              sampler).
  grads       one parameter-sized tree (parameter dtype); two with gradient accumulation.
Estimated (worst case: every prompt max_prompt_tokens long, every response the full budget;
b = micro-batch rows per device, T = max_prompt + max_response, Dt = compute dtype bytes,
Nd/Kd/Fd/Vd = heads, kv heads, ffn width, vocab per device after the tensor split):
  per layer, kept for the backward pass:  b·T·[(16 + 4·Dt)·D + 3·Dt·Fd + 3·Dt·(Nd + 2·Kd)·H]
    (fp32 RMSNorm internals, residuals, q/k/v, gate/up/product) + b·Nd·T²·(10 + Dt) (the naive
    attention: fp32 scores and softmax, probabilities in Dt, masked select)
  activations, remat off:  L · per-layer + b·T² (bool mask) + logits
              remat on:   L·b·T·D·Dt (layer inputs) + per-layer (one layer recomputed) + mask + logits
    (remat off, with gradients and gathered weights: 10-30% above XLA's CPU buffer assignment of
    ``update``, tests/training/test_plan.py; XLA CPU does not honour remat, so remat on is analytic)
  logits      b·C·Vd·13 bytes (fp32 logits, probabilities and their cotangent, a bool mask),
              C = T, or ``logits_chunk`` when the update computes the logits chunk by chunk.
  Two micro-batches (``num_micro == 2``) double the activations: accumulate_gradients runs the
    first outside its scan and XLA schedules both forward passes together (measured on CPU).
  gathered    with fsdp > 1 each layer's weights are all-gathered (in Dt) before use: two layers
              (one prefetched) plus the embedding / lm_head.
  rollout     decode: a copy of the attention window W (the largest power-of-two bucket below the
    capacity) of every slot's cache, plus one layer's (the in-loop scatter), + S·Vd·16 (logits,
    sampling); prefill: the rows of one insert (all fresh samples of a step, bucketed) × (window
    copy + Nd·512·T_w·(8 + Dt) scores, forward only). Both measured against XLA on CPU.
  rollout_params  with several hosts (JAX processes) each rolls out on a full copy of the policy
    in the compute dtype over its own devices (``training.distributed.local_copy``, laid out by
    ``local_mesh_shape``),
    with its share of the slots; the copy lives during the rollout only (freed before the update).
  score       old/reference log-probs (train.old_logprobs=recompute or a KL term): a forward pass
    over ``score_rows`` rows (rl.py: one micro-batch at a time) with its logits.
Phases: rollout = params + opt_state + reference + kv_cache + rollout_params + max(decode, prefill)
  + gathered (on the rollout's mesh);
update = params + opt_state + reference + kv_cache + grads + activations + gathered; score.
Peak = the largest phase; it fits when peak <= device memory × usable_fraction.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding

from arpo_jax.models.config import ModelConfig, get_preset
from arpo_jax.models.sharding import BATCH, MESH_AXES, fit_spec, param_spec
from arpo_jax.models.transformer import Transformer
from arpo_jax.sampling.config import SamplingConfig, bucket, prefill_length
from arpo_jax.sampling.state import init_state, state_shardings
from arpo_jax.training.distributed import local_mesh_shape
from arpo_jax.training.rl_config import RLConfig
from arpo_jax.training.update import make_optimizer

GiB = 2**30
DEVICE_MEMORY_GIB: dict[str, float] = {"v5p": 95.0, "v5e": 16.0, "v6e": 32.0, "v4": 32.0, "h100": 80.0,
                                       "h200": 141.0}
ATT_BYTES_FP32 = 10  # per attention score: fp32 scores + fp32 softmax + 2 (select / cotangent share)
LOGIT_BYTES = 13  # per logit: fp32 logits, probabilities, cotangent + bool finite mask
SAMPLE_BYTES = 16  # per decode logit: logits and the sampling/entropy temporaries (fp32)


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    """What to plan for besides the config.

    devices: mesh size (resolves a -1 in ``model.mesh``; default: the local device count).
    device / device_memory_gib: memory per device, by name (``DEVICE_MEMORY_GIB``) or in GiB.
    usable_fraction: share of it the plan may use (XLA workspace, fragmentation; GPU launches
      set XLA_PYTHON_CLIENT_MEM_FRACTION=0.9).
    preset: model preset to use instead of ``model.path`` / ``model.preset``.
    logits_chunk: time chunk of the update's logits (None: ``train.logits_chunk`` if the config
      has it, else 0 = [B, T, V] materialised).
    cache_during_update: the sampler's KV cache stays allocated while the update runs.
    score_rows: rows of one scoring forward pass (old log-probs with train.old_logprobs=recompute,
      reference log-probs with a KL term); None = one update micro-batch, as ``training/rl.py``
      scores a mini-batch (``score_tokens(num_micro=...)``).
    hosts: JAX processes the devices are split over (a v5p-16 is 2 hosts of 4 chips); with more
      than one, each host rolls out its share of the slots on its own copy of the policy.
    """

    devices: int | None = None
    device: str | None = None
    device_memory_gib: float | None = None
    usable_fraction: float = 0.9
    preset: str | None = None
    logits_chunk: int | None = None
    cache_during_update: bool = True
    score_rows: int | None = None
    hosts: int = 1


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of every component and phase, and the verdict.

    items: params, opt_state, reference, kv_cache, rollout_params, grads, activations,
      gathered_weights, decode_transient, prefill_transient. phases: rollout / update peaks. shapes: the sizes the
      estimate used (rows per device, T, slots, ...). max_slots: the largest rollout.num_slots
      (a multiple of data×fsdp) that fits, 0 if none does.
    """

    model: ModelConfig
    model_source: str
    mesh: dict[str, int]
    device: str
    device_bytes: int | None
    usable_bytes: int | None
    items: dict[str, int]
    phases: dict[str, int]
    peak: int
    fits: bool | None
    reason: str
    shapes: dict[str, Any]
    max_slots: int | None
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {k: v for k, v in dataclasses.asdict(self.model).items() if k != "rope_scaling"}
        return out


# ----------------------------------------------------------------------------- inputs
def resolve_model_config(cfg: RLConfig, preset: str | None = None) -> tuple[ModelConfig, str]:
    """The ``ModelConfig`` the run would use and where it came from (checkpoint config, preset,
    or the preset named like a missing ``model.path``, e.g. ``checkpoints/Qwen2.5-7B-Instruct``)."""
    m = cfg.model
    path = Path(m.path) if m.path else None
    if preset:
        mcfg, source = get_preset(preset), f"preset {preset!r}"
    elif path is not None and (path / "arpo_config.json").is_file():
        mcfg, source = ModelConfig(**json.loads((path / "arpo_config.json").read_text())), f"{path}/arpo_config.json"
    elif path is not None and (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
        dt = raw.get("torch_dtype") or raw.get("dtype")
        dt = dt if dt in ("float32", "bfloat16") else "float32"
        mcfg, source = ModelConfig.from_hf_config(raw, param_dtype=dt, dtype=dt), f"{path}/config.json"
    elif path is not None:
        try:
            mcfg = get_preset(path.name)
        except KeyError:
            raise FileNotFoundError(f"model.path {str(path)!r} does not exist and its name is not a preset; "
                                    "pass --preset") from None
        mcfg = mcfg.replace(param_dtype="bfloat16", dtype="bfloat16")  # what HF Qwen/Llama checkpoints store
        source = f"preset {path.name!r} (model.path absent)"
    else:
        fields = dict(m.config)
        try:
            mcfg = get_preset(m.preset, **fields) if m.preset else ModelConfig(**fields)
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


def _local(dim: int, axis: str, mesh) -> int:
    return dim // mesh.shape[axis] if dim % mesh.shape[axis] == 0 else dim


def _rows_per_device(rows: int, mesh) -> int:
    spec = fit_spec((BATCH,), (rows,), mesh)
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],) if spec[0] else ()
    return rows // math.prod(mesh.shape[a] for a in axes)


# ----------------------------------------------------------------------------- the plan
def plan(cfg: RLConfig, opts: PlanOptions = PlanOptions()) -> MemoryPlan:
    """Per-device memory of ``cfg`` on the mesh ``cfg.model.mesh`` over ``opts.devices`` devices."""
    name = (opts.device or "").lower()
    if name and name not in DEVICE_MEMORY_GIB and opts.device_memory_gib is None:
        raise ValueError(f"--device {opts.device!r} is unknown (known: {', '.join(DEVICE_MEMORY_GIB)})")
    if not 0 < opts.usable_fraction <= 1:
        raise ValueError(f"--usable-fraction must be in (0, 1], got {opts.usable_fraction}")
    gib = opts.device_memory_gib if opts.device_memory_gib is not None else DEVICE_MEMORY_GIB.get(name)
    dev_bytes = int(gib * GiB) if gib else None
    mcfg, source = resolve_model_config(cfg, opts.preset)
    devices = opts.devices or jax.device_count()
    mesh = abstract_mesh(cfg.model.mesh, devices)
    hosts = opts.hosts
    if hosts < 1 or devices % hosts:
        raise ValueError(f"--hosts {hosts} must be a positive divisor of the {devices} devices")
    # the rollout runs per host, on a mesh over its own devices (the mesh itself on one host)
    ro_mesh = mesh if hosts == 1 else AbstractMesh(local_mesh_shape(dict(mesh.shape), devices // hosts), MESH_AXES)
    slot_div = math.lcm(mesh.shape["data"] * mesh.shape["fsdp"], hosts)  # slots split over data×fsdp and hosts
    notes: list[str] = []

    abs_params = abstract_params(mcfg.replace(remat=False))
    p_bytes = shard_bytes(abs_params, param_shardings(abs_params, mesh))
    abs_opt = jax.eval_shape(make_optimizer(cfg.optimizer).init, abs_params)
    o_bytes = shard_bytes(abs_opt, param_shardings(abs_opt, mesh))
    ro_p_bytes = 0  # each host's rollout copy, stored in the compute dtype (local_copy)
    if hosts > 1:
        ro_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, mcfg.jnp_dtype), abs_params)
        ro_p_bytes = shard_bytes(ro_params, param_shardings(ro_params, ro_mesh))

    ro, tr, data = cfg.rollout, cfg.train, cfg.data
    per_prompt, capacity = ro.total_rollouts, ro.slot_capacity
    num_slots = ro.num_slots or data.prompts_per_step * per_prompt
    if num_slots % hosts:
        raise ValueError(f"rollout.num_slots ({num_slots}) must split evenly over the {hosts} hosts")

    def cache_bytes(slots: int) -> int:  # one host's share of the slots, on its rollout mesh
        st = jax.eval_shape(lambda: init_state(mcfg, slots // hosts, capacity))
        return shard_bytes(st, state_shardings(st, ro_mesh))

    dt = np.dtype(mcfg.jnp_dtype).itemsize
    d, h, L = mcfg.hidden_size, mcfg.head_dim, mcfg.num_layers
    nd = _local(mcfg.num_heads, "tensor", mesh)
    kd = _local(mcfg.num_kv_heads, "tensor", mesh)
    fd = _local(mcfg.intermediate_size, "tensor", mesh)
    vd = _local(mcfg.vocab_size, "tensor", mesh)
    att = ATT_BYTES_FP32 + dt

    # ---- update: micro-batch activations
    seq = ro.max_prompt_tokens + ro.max_response_tokens
    mini_rows = -(-data.prompts_per_step * per_prompt // tr.mini_batches)
    micro_rows = min(tr.micro_batch_size or mini_rows, mini_rows)
    num_micro = -(-mini_rows // micro_rows)
    b = _rows_per_device(micro_rows, mesh)
    chunk = opts.logits_chunk if opts.logits_chunk is not None else getattr(tr, "logits_chunk", 0)
    c = min(chunk, seq) if chunk else seq
    per_layer = b * seq * ((16 + 4 * dt) * d + 3 * dt * fd + 3 * dt * (nd + 2 * kd) * h) + b * nd * seq * seq * att
    mask = b * seq * seq
    logits = b * c * vd * LOGIT_BYTES
    if mcfg.remat:
        acts = L * b * seq * d * dt + per_layer + mask + logits
    else:
        acts = L * per_layer + mask + logits
    if num_micro == 2:
        acts *= 2
        notes.append("2 micro-batches: XLA runs both forward passes at once (activations counted twice); "
                     "use 1 or >= 3 micro-batches")
    grads = p_bytes * (2 if num_micro > 1 else 1)

    # ---- scoring forward pass (no gradients: one layer's working set at a time)
    scoring = tr.old_logprobs == "recompute" or cfg.loss.kl_coef > 0
    score_rows = min(opts.score_rows or micro_rows, mini_rows)
    bs = _rows_per_device(score_rows, mesh)
    score_acts = 0
    if scoring:
        score_acts = bs * (seq * ((8 + 4 * dt) * d + 3 * dt * fd + 3 * dt * (nd + 2 * kd) * h)
                           + nd * seq * seq * (8 + dt) + seq * seq + c * vd * LOGIT_BYTES)

    # ---- weights all-gathered for compute (fsdp)
    def gathered_bytes(m) -> int:
        if m.shape["fsdp"] == 1:
            return 0
        layer_params = (mcfg.num_params() - mcfg.vocab_size * d * (1 if mcfg.tie_word_embeddings else 2)) // L
        return (2 * layer_params + mcfg.vocab_size * d) * dt // m.shape["tensor"]

    gathered, ro_gathered = gathered_bytes(mesh), gathered_bytes(ro_mesh)

    # ---- rollout transients (functions of the slot count)
    scfg = SamplingConfig()
    r_nd, r_kd, r_vd = (_local(x, "tensor", ro_mesh) for x in (mcfg.num_heads, mcfg.num_kv_heads, mcfg.vocab_size))
    cache_row = 2 * L * r_kd * h * dt  # bytes of one token of one slot, per device
    win = 1 << (capacity - 1).bit_length() - 1 if capacity > scfg.min_window else 0  # largest bucket < capacity
    fresh = data.prompts_per_step * (per_prompt if ro.policy == "trajectory" else ro.initial_rollouts)
    t_w = prefill_length(ro.max_prompt_tokens - 1, scfg, capacity)
    piece = min(t_w, scfg.prefill_chunk)

    def transients(slots: int) -> tuple[int, int]:  # one host's share of the slots and fresh samples
        slots, host_fresh = slots // hosts, -(-fresh // hosts)
        s_dev = _rows_per_device(slots, ro_mesh)
        window_copy = max(win * (L + 1), capacity) * cache_row // L  # window + one layer's scatter copy
        decode = s_dev * (window_copy + r_vd * SAMPLE_BYTES + r_nd * win * 8)
        n = bucket(min(slots, host_fresh), 1, slots)
        n_dev = _rows_per_device(n, ro_mesh)
        r_fd = _local(mcfg.intermediate_size, "tensor", ro_mesh)
        prefill = n_dev * (t_w * cache_row + r_nd * piece * t_w * (8 + dt) + piece * ((8 + 4 * dt) * d + 3 * dt * r_fd))
        return decode, prefill

    ref = p_bytes if cfg.loss.kl_coef > 0 else 0
    static = p_bytes + o_bytes + ref

    def phases(slots: int) -> tuple[dict[str, int], dict[str, int]]:
        kv = cache_bytes(slots)
        decode, prefill = transients(slots)
        items = dict(params=p_bytes, opt_state=o_bytes, reference=ref, kv_cache=kv, rollout_params=ro_p_bytes,
                     grads=grads, activations=acts, score_activations=score_acts,
                     gathered_weights=max(gathered, ro_gathered), decode_transient=decode, prefill_transient=prefill)
        ph = dict(rollout=static + kv + ro_p_bytes + max(decode, prefill) + ro_gathered,
                  update=static + (kv if opts.cache_during_update else 0) + grads + acts + gathered)
        if scoring:
            ph["score"] = static + kv + score_acts + gathered
        return items, ph

    items, ph = phases(num_slots)
    peak = max(ph.values())
    usable = int(dev_bytes * opts.usable_fraction) if dev_bytes else None
    max_slots = None
    if usable is not None:
        fits_at = lambda s: max(phases(s)[1].values()) <= usable  # noqa: E731
        lo, hi = 0, max(num_slots // slot_div, 1)
        while lo < hi:  # largest k with k·slot_div slots fitting
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits_at(mid * slot_div) else (lo, mid - 1)
        max_slots = lo * slot_div

    fits = None if usable is None else peak <= usable
    worst = max(ph, key=ph.get)
    if fits is None:
        reason = f"peak {peak / GiB:.1f} GiB per device ({worst} phase); no device memory given"
    elif fits:
        reason = f"fits: peak {peak / GiB:.1f} GiB per device ({worst} phase) <= {usable / GiB:.1f} GiB usable"
    else:
        over = ", ".join(f"{k} {v / GiB:.1f}" for k, v in ph.items() if v > usable)
        reason = f"does not fit: per-device GiB {over} > {usable / GiB:.1f} usable"
        if max_slots and max_slots < num_slots:
            reason += f"; fits with rollout.num_slots={max_slots}"
        else:
            small = phases(slot_div)[1]
            left = ", ".join(f"{k} {v / GiB:.1f}" for k, v in small.items() if v > usable)
            reason += f"; even with rollout.num_slots={slot_div}: {left} GiB"
    if b * slot_div != micro_rows:
        notes.append(f"micro-batch of {micro_rows} rows does not split over data×fsdp={slot_div}: "
                     f"{b} rows per device")
    if not mcfg.remat and acts > 0.25 * peak:
        notes.append("model.remat=false: activations of every layer are kept; remat=true keeps one layer's")
    if not chunk and max(logits, bs * c * vd * LOGIT_BYTES * scoring) > 0.1 * peak:
        notes.append("[B, T, V] logits are materialised: train.logits_chunk=1024 (or another chunk) bounds them")
    if scoring and score_acts > acts:
        notes.append(f"scoring runs {score_rows} rows in one forward pass ({bs} per device): "
                     f"{score_acts / GiB:.1f} GiB of activations")
    if max(transients(num_slots)) > 0.2 * peak:
        notes.append("rollout transients are large: the decode window copy and one insert of every fresh sample")
    shapes = dict(devices=devices, hosts=hosts, rollout_mesh=dict(ro_mesh.shape), micro_rows=micro_rows, rows_per_device=b, num_micro=num_micro, seq_len=seq,
                  logits_chunk=chunk, num_slots=num_slots, slots_per_device=_rows_per_device(num_slots // hosts, ro_mesh),
                  capacity=capacity, decode_window=win,
                  prefill_rows=bucket(min(num_slots // hosts, -(-fresh // hosts)), 1, num_slots // hosts),
                  prefill_window=t_w, score_rows=score_rows if scoring else 0, heads_per_device=nd,
                  kv_heads_per_device=kd, vocab_per_device=vd, num_params=mcfg.num_params())
    return MemoryPlan(model=mcfg, model_source=source, mesh=dict(mesh.shape), device=name or "unspecified",
                      device_bytes=dev_bytes, usable_bytes=usable, items=items, phases=ph, peak=peak, fits=fits,
                      reason=reason, shapes=shapes, max_slots=max_slots, notes=notes)


# ----------------------------------------------------------------------------- output
def format_plan(p: MemoryPlan) -> str:
    """A human-readable table of ``p``."""
    gib = lambda x: f"{x / GiB:10.2f}"  # noqa: E731
    s = p.shapes
    m = p.model
    r = s["rollout_mesh"]
    per_host = "" if s["hosts"] == 1 else (f" per host; {s['hosts']} hosts, each on its own policy copy (mesh "
                                           f"data={r['data']} fsdp={r['fsdp']} tensor={r['tensor']})")
    lines = [
        f"model: {m.family} {s['num_params'] / 1e9:.2f}B params ({p.model_source}); param {m.param_dtype}, "
        f"compute {m.dtype}, remat {m.remat}",
        f"mesh: data={p.mesh['data']} fsdp={p.mesh['fsdp']} tensor={p.mesh['tensor']} ({s['devices']} devices, "
        f"{p.device})",
        f"update: {s['micro_rows']} rows per micro-batch ({s['rows_per_device']} per device) x {s['num_micro']}, "
        f"T={s['seq_len']}, logits chunk {s['logits_chunk'] or 'off'}",
        f"rollout: {s['num_slots']} slots ({s['slots_per_device']} per device) x {s['capacity']} tokens; "
        f"decode window {s['decode_window']}, prefill {s['prefill_rows']} rows x {s['prefill_window']}{per_host}",
        f"scoring: {s['score_rows']} rows per forward pass" if s["score_rows"] else "scoring: off",
        "",
        f"{'per device':<20}{'GiB':>10}",
    ]
    lines += [f"{k:<20}{gib(v)}" for k, v in p.items.items()]
    lines += [f"{'phase ' + k:<20}{gib(v)}" for k, v in p.phases.items()]
    lines.append(f"{'peak':<20}{gib(p.peak)}")
    if p.device_bytes:
        lines.append(f"{'device (usable)':<20}{gib(p.device_bytes)} ({p.usable_bytes / GiB:.2f})")
    lines += ["", p.reason] + [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def run_plan_command(args) -> int:
    """``arpo-jax plan``: prints the table (or JSON); exit 0 fits (or no device given), 1 does not."""
    from arpo_jax.config import load_config

    cfg = load_config(RLConfig, args.config, args.overrides)
    opts = PlanOptions(devices=args.devices, device=args.device, device_memory_gib=args.device_memory_gib,
                       usable_fraction=args.usable_fraction, preset=args.preset, logits_chunk=args.logits_chunk,
                       hosts=args.hosts)
    p = plan(cfg, opts)
    print(json.dumps(p.to_json(), indent=2) if args.json else format_plan(p))
    return 1 if p.fits is False else 0
