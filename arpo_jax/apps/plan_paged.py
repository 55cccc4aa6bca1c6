"""The paged KV layout in ``arpo-jax plan`` (``rollout.kv_layout: paged``).

Memory. The pool: ``rollout.kv_pages`` pages per host (0: every prompt of the host × one
prompt's worst case, ``worst_case_pages``) of ``page_size`` tokens, k and v per layer
[K, P, Z, H] in the compute dtype, exact from ``init_state`` and ``state_shardings`` on the
rollout mesh: kv heads split over ``tensor``, the pages *not* split over data × fsdp (every
device of those axes holds the whole pool), plus the per-slot page tables. Transients of the
reference paged attention (the engine's; the Pallas kernels read the pages in place):
  decode   every slot's window (W = capacity rounded up to pages, the worst case) of two
           layers' k and v gathered (one in use, one scheduled ahead), fp32 scores
           S·Nd·W·8 and the logits S·Vd·16, S = slots per device;
  prefill  one prompt per insert (each prompt is prefilled once; its samples are forks): one
           row of the contiguous formula (``Estimate.transients``) with a window gather.
Phases as for the contiguous layout (the pool stays allocated during the update).

Trajectories in flight (steady state of ``rollout.scheduler``): a prompt is admitted while
the admitted prompts' estimated pages fit the pool, the estimate being the mean pages of a
completed prompt × ``ESTIMATE_MARGIN``. A prompt tree's pages come from a stated length
distribution (``LengthModel``): prompt tokens (max_prompt_tokens unless told), N initial
trajectories of the mean response, M − N branches that share a fraction of their response with
their parent; + one partial page per trajectory (``PageBudget.completed``). No measured
distribution of the paper runs exists in the repository (the release ships no rollouts), so
the mean response is a fraction of ``max_response_tokens`` given by the caller.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from arpo_jax.apps.plan_estimate import SAMPLE_BYTES, Estimate, rows_per_device, shard_bytes
from arpo_jax.rollout.scheduler import ESTIMATE_MARGIN, pages_for, worst_case_pages
from arpo_jax.sampling.state import init_state, state_shardings


@dataclasses.dataclass(frozen=True)
class LengthModel:
    """The assumed length distribution of one prompt tree (means).

    response_fraction: mean response tokens (tool results included) / max_response_tokens.
    branch_shared: share of a branch's response it inherits from its parent (a fork happens at
      a tool result, inside the parent's response).
    prompt_tokens: mean prompt tokens (None: max_prompt_tokens, the worst case).
    """

    response_fraction: float = 0.5
    branch_shared: float = 0.5
    prompt_tokens: int | None = None

    def __post_init__(self):
        if not 0 < self.response_fraction <= 1 or not 0 <= self.branch_shared < 1:
            raise ValueError(f"--mean-response-fraction must be in (0, 1] and --branch-shared in [0, 1), got "
                             f"{self.response_fraction}, {self.branch_shared}")


class PagedEstimate:
    """Per-device bytes of the paged layout for ``est``'s config, and the in-flight model."""

    def __init__(self, est: Estimate):
        ro = est.cfg.rollout
        self.est, self.page = est, ro.page_size
        self.slots = est.num_slots  # bookkeeping only; 0 in the config = prompts × M
        self.capacity = pages_for(est.capacity, self.page) * self.page
        self.worst = worst_case_pages(ro.max_prompt_tokens, ro.max_response_tokens, est.per_prompt, self.page,
                                      ro.chunk_size)
        self.host_prompts = -(-est.cfg.data.prompts_per_step // est.hosts)
        self.auto_pages = self.host_prompts * self.worst
        self.pages = ro.kv_pages or self.auto_pages
        self.layer_token = est.cache_row // est.mcfg.num_layers  # k and v of one token, one layer, per device

    def pool_bytes(self, pages: int) -> int:
        """One host's pool of ``pages`` pages and its slots' page tables, per device (exact)."""
        est = self.est
        st = jax.eval_shape(lambda: init_state(est.mcfg, self.slots // est.hosts, self.capacity,
                                               paged=(pages, self.page, "reference")))
        return shard_bytes(st, state_shardings(st, est.ro_mesh))

    def transients(self) -> tuple[int, int]:
        """(decode, prefill) transients of the reference paged attention (module docstring)."""
        est, w = self.est, self.capacity
        s_dev = rows_per_device(self.slots // est.hosts, est.ro_mesh)
        decode = s_dev * (2 * w * self.layer_token + est.r_nd * w * 8 + est.r_vd * SAMPLE_BYTES)
        d, t_w, piece = est.mcfg.hidden_size, est.t_w, est.piece
        prefill = (t_w * (est.cache_row + 2 * self.layer_token) + est.r_nd * piece * t_w * (8 + est.dt)
                   + piece * ((8 + 4 * est.dt) * d + 3 * est.dt * est.r_fd))
        return decode, prefill

    def phases(self, pages: int) -> tuple[dict[str, int], dict[str, int]]:
        """(items, phases) per device with a pool of ``pages`` pages per host."""
        est = self.est
        kv = self.pool_bytes(pages)
        decode, prefill = self.transients()
        items = dict(params=est.p_bytes, opt_state=est.o_bytes, reference=est.ref, kv_cache=kv,
                     rollout_params=est.ro_p_bytes, grads=est.grads, activations=est.acts,
                     score_activations=est.score_acts, gathered_weights=max(est.gathered, est.ro_gathered),
                     decode_transient=decode, prefill_transient=prefill)
        ph = dict(rollout=est.static + kv + est.ro_p_bytes + max(decode, prefill) + est.ro_gathered,
                  update=est.static + (kv if est.cache_during_update else 0) + est.grads + est.acts + est.gathered)
        if est.scoring:
            ph["score"] = est.static + kv + est.score_acts + est.gathered
        return items, ph

    def max_pages(self, usable: int | None) -> int | None:
        """The largest rollout.kv_pages (per host) that fits (< one prompt's worst case: 0)."""
        if usable is None:
            return None
        fits = lambda p: max(self.phases(p)[1].values()) <= usable  # noqa: E731
        lo, hi = 0, max(self.auto_pages, 1)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo if lo >= self.worst else 0

    def tree(self, lengths: LengthModel) -> dict[str, float]:
        """Tokens and pages of one prompt tree under ``lengths``, and the admission estimate."""
        est, ro = self.est, self.est.cfg.rollout
        m, n = est.per_prompt, est.fresh // est.cfg.data.prompts_per_step
        resp = lengths.response_fraction * ro.max_response_tokens
        prompt = lengths.prompt_tokens or ro.max_prompt_tokens
        tokens = prompt + n * resp + (m - n) * resp * (1 - lengths.branch_shared)
        pages = pages_for(math.ceil(tokens), self.page) + m
        return dict(prompt_tokens=prompt, mean_response_tokens=resp, initial=n, tree_tokens=tokens, tree_pages=pages,
                    admission_pages=min(self.worst, math.ceil(pages * ESTIMATE_MARGIN)))

    def in_flight(self, pages: int, lengths: LengthModel) -> dict[str, float]:
        """Prompts and trajectories in flight (all hosts) with ``pages`` per host, steady state."""
        est, tree = self.est, self.tree(lengths)
        per_host = 0 if pages < self.worst else max(1, min(self.host_prompts, pages // tree["admission_pages"]))
        prompts = per_host * est.hosts
        return dict(tree, kv_pages=pages, pool_tokens=pages * self.page, prompts_in_flight=prompts,
                    trajectories_in_flight=prompts * est.per_prompt, whole_step=per_host >= self.host_prompts,
                    # each device holds the whole tree (pages are not split over data × fsdp)
                    kv_bytes_per_trajectory=tree["tree_tokens"] * est.cache_row / est.per_prompt)


def contiguous_in_flight(est: Estimate, slots: int) -> dict[str, float]:
    """Trajectories the contiguous layout has in flight with ``slots`` slots (M reserved per
    prompt), and one trajectory's KV bytes per device (its row, split over data × fsdp)."""
    prompts = min(slots // est.per_prompt, est.cfg.data.prompts_per_step)
    host_slots = slots // est.hosts
    split = host_slots / max(rows_per_device(host_slots, est.ro_mesh), 1)
    return dict(num_slots=slots, prompts_in_flight=prompts, trajectories_in_flight=prompts * est.per_prompt,
                whole_step=prompts >= est.cfg.data.prompts_per_step,
                kv_bytes_per_trajectory=est.capacity * est.cache_row / split)
