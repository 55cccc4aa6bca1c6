"""Per-device memory plan of an RL config: ``arpo-jax plan CONFIG.yaml [key=value ...]``.

Exact (from the real partition rules on an ``AbstractMesh``, no devices needed):
  params      ``jax.eval_shape`` of the ``Transformer``, each leaf split by ``param_spec``.
  opt_state   ``jax.eval_shape(make_optimizer(cfg.optimizer).init, params)`` (AdamW: mu and
              nu in the parameter dtype, split like the parameters) and a step counter.
  kv_cache    the sampler's ``SamplerState`` (``init_state``) for ``rollout.num_slots`` slots
              (0: prompts_per_step × M) of ``rollout.slot_capacity`` tokens, in the compute
              dtype, split by ``sampling.state.state_shardings`` (slots over data×fsdp, kv heads
              over tensor); it stays allocated during the update (the rollout engine keeps its
              sampler). ``rollout.kv_layout: paged``: the page pool, its transients and the
              trajectories in flight for an assumed length distribution (``apps.plan_paged``).
  grads       one parameter-sized tree (parameter dtype); two with gradient accumulation.
Estimated (worst case: every prompt max_prompt_tokens long, every response the full budget;
b = micro-batch rows per device, T = max_prompt + max_response, Dt = compute dtype bytes
(``train.packing``: b = packed rows per device, one per prompt tree of T = max_prompt + M·max_response;
``model.config.attention_impl`` other than reference: one 512² score block per head instead of T²),
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
The byte counts are computed in ``apps.plan_estimate`` (``Estimate``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
from jax.sharding import AbstractMesh

from arpo_jax.models.config import ModelConfig
from arpo_jax.models.sharding import MESH_AXES
from arpo_jax.training.distributed import local_mesh_shape
from arpo_jax.apps.plan_paged import LengthModel, PagedEstimate, contiguous_in_flight
from arpo_jax.apps.plan_estimate import (LOGIT_BYTES, Estimate, abstract_mesh, abstract_params, param_shardings,
                                            resolve_model_config, rows_per_device, shard_bytes)
from arpo_jax.training.rl_config import RLConfig

__all__ = ["DEVICE_MEMORY_GIB", "GiB", "MemoryPlan", "PlanOptions", "abstract_mesh", "abstract_params", "format_plan",
           "param_shardings", "plan", "resolve_model_config", "run_plan_command", "shard_bytes"]

GiB = 2**30
DEVICE_MEMORY_GIB: dict[str, float] = {"v5p": 95.0, "v5e": 16.0, "v6e": 32.0, "v4": 32.0, "h100": 80.0,
                                       "h200": 141.0}


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
    lengths: the assumed length distribution behind "trajectories in flight" with the paged KV
      layout (``apps.plan_paged.LengthModel``).
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
    lengths: LengthModel = LengthModel()


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of every component and phase, and the verdict.

    items: params, opt_state, reference, kv_cache, rollout_params, grads, activations,
      gathered_weights, decode_transient, prefill_transient. phases: rollout / update peaks. shapes: the sizes the
      estimate used (rows per device, T, slots, ...). max_slots: the largest rollout.num_slots
      (a multiple of data×fsdp) that fits, 0 if none does (contiguous layout). max_pages: the
      largest rollout.kv_pages that fits (paged layout). in_flight: prompts and trajectories
      the rollout has in flight at once, and KV bytes per trajectory per device
      (``apps.plan_paged``: paged from the assumed length distribution).
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
    max_pages: int | None = None
    in_flight: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {k: v for k, v in dataclasses.asdict(self.model).items() if k != "rope_scaling"}
        return out


# ----------------------------------------------------------------------------- the plan
def _device_bytes(opts: PlanOptions) -> tuple[str, int | None]:
    """(device kind, bytes per device or None) of the options."""
    name = (opts.device or "").lower()
    if name and name not in DEVICE_MEMORY_GIB and opts.device_memory_gib is None:
        raise ValueError(f"--device {opts.device!r} is unknown (known: {', '.join(DEVICE_MEMORY_GIB)})")
    if not 0 < opts.usable_fraction <= 1:
        raise ValueError(f"--usable-fraction must be in (0, 1], got {opts.usable_fraction}")
    gib = opts.device_memory_gib if opts.device_memory_gib is not None else DEVICE_MEMORY_GIB.get(name)
    return name, int(gib * GiB) if gib else None


def _meshes(cfg: RLConfig, devices: int, hosts: int) -> tuple[AbstractMesh, AbstractMesh, int]:
    """(training mesh, one host's rollout mesh, the multiple slot counts must be)."""
    mesh = abstract_mesh(cfg.model.mesh, devices)
    if hosts < 1 or devices % hosts:
        raise ValueError(f"--hosts {hosts} must be a positive divisor of the {devices} devices")
    # the rollout runs per host, on a mesh over its own devices (the mesh itself on one host)
    ro_mesh = mesh if hosts == 1 else AbstractMesh(local_mesh_shape(dict(mesh.shape), devices // hosts), MESH_AXES)
    slot_div = math.lcm(mesh.shape["data"] * mesh.shape["fsdp"], hosts)  # slots split over data×fsdp and hosts
    return mesh, ro_mesh, slot_div


def _max_slots(est: Estimate, usable: int | None, slot_div: int) -> int | None:
    """The largest rollout.num_slots (a multiple of ``slot_div``) that fits; 0 if none does."""
    if usable is None:
        return None
    lo, hi = 0, max(est.num_slots // slot_div, 1)
    while lo < hi:  # largest k with k·slot_div slots fitting
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if max(est.phases(mid * slot_div)[1].values()) <= usable else (lo, mid - 1)
    return lo * slot_div


def _reason(est: Estimate, ph: dict[str, int], usable: int | None, max_slots: int | None, slot_div: int) -> str:
    peak = max(ph.values())
    worst = max(ph, key=ph.get)
    if usable is None:
        return f"peak {peak / GiB:.1f} GiB per device ({worst} phase); no device memory given"
    if peak <= usable:
        return f"fits: peak {peak / GiB:.1f} GiB per device ({worst} phase) <= {usable / GiB:.1f} GiB usable"
    over = ", ".join(f"{k} {v / GiB:.1f}" for k, v in ph.items() if v > usable)
    reason = f"does not fit: per-device GiB {over} > {usable / GiB:.1f} usable"
    if max_slots and max_slots < est.num_slots:
        return reason + f"; fits with rollout.num_slots={max_slots}"
    small = est.phases(slot_div)[1]
    left = ", ".join(f"{k} {v / GiB:.1f}" for k, v in small.items() if v > usable)
    return reason + f"; even with rollout.num_slots={slot_div}: {left} GiB"


def _notes(est: Estimate, peak: int, slot_div: int) -> list[str]:
    notes = list(est.notes)
    if est.b * slot_div != est.update_rows:
        notes.append(f"micro-batch of {est.update_rows} rows does not split over data×fsdp={slot_div}: "
                     f"{est.b} rows per device")
    if not est.mcfg.remat and est.acts > 0.25 * peak:
        notes.append("model.remat=false: activations of every layer are kept; remat=true keeps one layer's")
    if not est.chunk and max(est.logits, est.bs * est.c * est.vd * LOGIT_BYTES * est.scoring) > 0.1 * peak:
        notes.append("[B, T, V] logits are materialised: train.logits_chunk=1024 (or another chunk) bounds them")
    if est.scoring and est.score_acts > est.acts:
        notes.append(f"scoring runs {est.score_rows} rows in one forward pass ({est.bs} per device): "
                     f"{est.score_acts / GiB:.1f} GiB of activations")
    if max(est.transients(est.num_slots)) > 0.2 * peak:
        notes.append("rollout transients are large: the decode window copy and one insert of every fresh sample")
    return notes


def _shapes(est: Estimate, devices: int) -> dict[str, Any]:
    hosts, num_slots = est.hosts, est.num_slots
    return dict(devices=devices, hosts=hosts, rollout_mesh=dict(est.ro_mesh.shape), micro_rows=est.micro_rows,
                rows_per_device=est.b, num_micro=est.num_micro, seq_len=est.seq, logits_chunk=est.chunk,
                packed=est.packed, attention_impl=getattr(est.mcfg, "attention_impl", "reference"),
                num_slots=num_slots, slots_per_device=rows_per_device(num_slots // hosts, est.ro_mesh),
                capacity=est.capacity, decode_window=est.win, prefill_rows=est.prefill_rows(num_slots),
                prefill_window=est.t_w, score_rows=est.score_rows if est.scoring else 0, heads_per_device=est.nd,
                kv_heads_per_device=est.kd, vocab_per_device=est.vd, num_params=est.mcfg.num_params())


def plan(cfg: RLConfig, opts: PlanOptions = PlanOptions()) -> MemoryPlan:
    """Per-device memory of ``cfg`` on the mesh ``cfg.model.mesh`` over ``opts.devices`` devices."""
    name, dev_bytes = _device_bytes(opts)
    mcfg, source = resolve_model_config(cfg, opts.preset)
    devices = opts.devices or jax.device_count()
    mesh, ro_mesh, slot_div = _meshes(cfg, devices, opts.hosts)
    est = Estimate(cfg, mcfg, mesh, ro_mesh, opts.hosts, logits_chunk=opts.logits_chunk, score_rows=opts.score_rows,
                   cache_during_update=opts.cache_during_update)
    usable = int(dev_bytes * opts.usable_fraction) if dev_bytes else None
    shapes = _shapes(est, devices)
    if cfg.rollout.kv_layout == "paged":
        pe = PagedEstimate(est)
        items, ph = pe.phases(pe.pages)
        max_pages, max_slots = pe.max_pages(usable), None
        reason = _paged_reason(pe, ph, usable, max_pages)
        in_flight = pe.in_flight(pe.pages, opts.lengths)
        shapes.update(kv_layout="paged", page_size=pe.page, kv_pages=pe.pages, worst_case_pages=pe.worst,
                      capacity=pe.capacity, prefill_rows=1)
    else:
        items, ph = est.phases(est.num_slots)
        max_slots, max_pages = _max_slots(est, usable, slot_div), None
        reason = _reason(est, ph, usable, max_slots, slot_div)
        in_flight = contiguous_in_flight(est, est.num_slots)
        shapes.update(kv_layout="contiguous")
    peak = max(ph.values())
    return MemoryPlan(model=mcfg, model_source=source, mesh=dict(mesh.shape), device=name or "unspecified",
                      device_bytes=dev_bytes, usable_bytes=usable, items=items, phases=ph, peak=peak,
                      fits=None if usable is None else peak <= usable, reason=reason, shapes=shapes,
                      max_slots=max_slots, notes=_notes(est, peak, slot_div), max_pages=max_pages,
                      in_flight=in_flight)


def _paged_reason(pe: PagedEstimate, ph: dict[str, int], usable: int | None, max_pages: int | None) -> str:
    """The verdict of a paged plan, with the largest rollout.kv_pages that fits."""
    peak, worst = max(ph.values()), max(ph, key=ph.get)
    if usable is None:
        return f"peak {peak / GiB:.1f} GiB per device ({worst} phase); no device memory given"
    hint = f"; rollout.kv_pages={max_pages} fits" if max_pages else \
        f"; not even one prompt's worst case ({pe.worst} pages) fits"
    if peak <= usable:
        return f"fits: peak {peak / GiB:.1f} GiB per device ({worst} phase) <= {usable / GiB:.1f} GiB usable" + (
            hint if max_pages and max_pages > pe.pages else "")
    over = ", ".join(f"{k} {v / GiB:.1f}" for k, v in ph.items() if v > usable)
    return f"does not fit: per-device GiB {over} > {usable / GiB:.1f} usable" + hint


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
        _rollout_line(p, per_host),
        _in_flight_line(p),
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


def _rollout_line(p: MemoryPlan, per_host: str) -> str:
    s = p.shapes
    if s["kv_layout"] == "paged":
        return (f"rollout: paged KV, {s['kv_pages']} pages of {s['page_size']} tokens (one prompt's worst case: "
                f"{s['worst_case_pages']}), {s['num_slots']} slots ({s['slots_per_device']} per device) x "
                f"{s['capacity']} tokens of page table; prefill 1 row x {s['prefill_window']}{per_host}")
    return (f"rollout: {s['num_slots']} slots ({s['slots_per_device']} per device) x {s['capacity']} tokens; "
            f"decode window {s['decode_window']}, prefill {s['prefill_rows']} rows x {s['prefill_window']}{per_host}")


def _in_flight_line(p: MemoryPlan) -> str:
    f = p.in_flight
    line = (f"in flight: {f['prompts_in_flight']} prompts, {f['trajectories_in_flight']} trajectories"
            f"{' (a whole step)' if f['whole_step'] else ''}; KV {f['kv_bytes_per_trajectory'] / 2**20:.1f} MiB "
            "per trajectory per device")
    if p.shapes["kv_layout"] == "paged":
        line += (f" (assumed: prompts {f['prompt_tokens']} tokens, mean response {f['mean_response_tokens']:.0f}, "
                 f"{f['initial']} initial + branches sharing part of the parent's response: "
                 f"{f['tree_tokens']:.0f} tokens, {f['tree_pages']} pages per prompt tree)")
    return line


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
