"""The largest end-to-end path that exists so far, run by ``arpo-jax demo``.

Builds a tiny random Qwen3 checkpoint with transformers, imports it with ``load_hf``,
checks logit parity against PyTorch (full forward and token-by-token through the KV cache),
runs the same forward sharded over every local device, converts HF -> arpo_jax -> HF and
reloads the export in transformers. Each stage prints what it measured. Later stages
(cold-start SFT, ARPO RL, evaluation) join here as they are built.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _stage(name: str):
    print(f"[demo] {name} ...", flush=True)
    return time.perf_counter()


def run(out: Path) -> dict:
    import torch
    import transformers

    from arpo_jax.models import load_hf, make_mesh, save_hf
    from arpo_jax.models.native_io import load_native, save_native

    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    t0 = _stage("building a tiny random Qwen3 checkpoint with transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=512, tie_word_embeddings=True)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).float().eval()
    hf.save_pretrained(str(out / "hf_random"))
    report["build_s"] = round(time.perf_counter() - t0, 2)

    t0 = _stage("loading it with arpo_jax.models.load_hf and comparing logits with PyTorch")
    model, cfg = load_hf(out / "hf_random")
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 24))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32)))
    report["max_abs_logit_diff_forward"] = float(np.abs(ours - ref).max())

    cache = model.init_cache(4, 32)
    step = jax.jit(lambda m, t, c: m(t, cache=c))
    steps = []
    for t in range(ids.shape[1]):
        logits, cache = step(model, jnp.asarray(ids[:, t:t + 1], jnp.int32), cache)
        steps.append(np.asarray(logits)[:, 0])
    report["max_abs_logit_diff_kv_cache"] = float(np.abs(np.stack(steps, 1) - ref).max())
    report["parity_s"] = round(time.perf_counter() - t0, 2)

    t0 = _stage(f"sharded load + forward over {jax.device_count()} device(s)")
    mesh = make_mesh((-1, 1, 1))
    sharded, _ = load_hf(out / "hf_random", mesh=mesh)
    with jax.set_mesh(mesh):
        sharded_out = np.asarray(jax.jit(lambda m, t: m(t))(sharded, jnp.asarray(ids, jnp.int32)))
    report["max_abs_logit_diff_sharded"] = float(np.abs(sharded_out - ours).max())

    t0 = _stage("converting HF -> arpo_jax (orbax) -> HF and reloading in transformers")
    save_native(model, cfg, out / "arpo_ckpt")
    native, _ = load_native(out / "arpo_ckpt")
    save_hf(native, cfg, out / "hf_export")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out / "hf_export"), dtype=torch.float32).eval()
    with torch.no_grad():
        report["max_abs_logit_diff_round_trip"] = float(np.abs(back(torch.tensor(ids)).logits.numpy() - ref).max())
    report["convert_s"] = round(time.perf_counter() - t0, 2)
    report["params"] = cfg.num_params()
    report["outputs"] = str(out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    ok = all(report[k] <= 1e-4 for k in report if k.startswith("max_abs"))
    print("\n".join(f"  {k:>32}: {v}" for k, v in report.items()))
    print(f"[demo] {'PASS' if ok else 'FAIL'}: every logit difference <= 1e-4" )
    report["ok"] = ok
    return report
