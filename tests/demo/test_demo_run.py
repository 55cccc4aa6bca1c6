"""``arpo-jax demo --quick`` end to end (data → SFT → eval → ARPO → eval → plots), and the
exported checkpoint loads in transformers with the same logits as in arpo_jax."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from arpo_jax.models import load_hf


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "arpo_jax.cli", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "held-out accuracy" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_after_sft", "accuracy_after_rl", "tool_calls_per_question_rl", "branches_per_prompt"):
        assert np.isfinite(s[key]), key
    o = s["outputs"]
    for key in ("training", "entropy_rl_png", "entropy_rl_json", "entropy_png"):
        assert os.path.getsize(o[key]) > 0, key
    ent = json.loads(open(o["entropy_rl_json"]).read())
    assert ent  # the measured numbers next to the plot
    rows = [json.loads(x) for x in open(o["rl_metrics"]).read().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["update/loss"]) for r in rows)
    assert len(os.listdir(o["rollout_dumps"])) == 2
    for name in ("eval_sft", "eval_rl"):
        assert (out / name / "metrics.md").is_file() and (out / name / "metrics.json").is_file()

    # the RL export loads in transformers and gives arpo_jax's logits
    model, _ = load_hf(o["rl_model"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(o["rl_model"]).eval()
    ids = np.arange(1, 40)[None] % hf.config.vocab_size
    with torch.no_grad():
        ref = hf(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids, jnp.int32))), ref, atol=2e-4)
