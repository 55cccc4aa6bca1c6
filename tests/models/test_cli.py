"""`arpo-jax convert` (HF <-> arpo_jax) and `arpo-jax info`."""

import json

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from arpo_jax.cli import main
from arpo_jax.models import load_hf
from arpo_jax.models.native_io import load_native
from tests.models.hf_tiny import save_tiny


def test_convert_round_trip_and_info(tmp_path, capsys):
    src = tmp_path / "hf"
    hf = save_tiny("qwen3", src)
    assert main(["convert", str(src), str(tmp_path / "native")]) == 0
    native, cfg = load_native(tmp_path / "native")
    ref, _ = load_hf(src)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(native(ids)), np.asarray(ref(ids)))

    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--to", "hf"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"), dtype=torch.float32).eval()
    with torch.no_grad():
        t = torch.tensor(np.asarray(ids))
        np.testing.assert_allclose(back(t).logits.numpy(), hf(t).logits.numpy(), atol=1e-6)

    capsys.readouterr()
    assert main(["info", str(tmp_path / "native"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "qwen3" and info["params"] == sum(p.numel() for p in hf.parameters())


def test_convert_bf16_and_bad_source(tmp_path, capsys):
    src = tmp_path / "hf"
    save_tiny("llama", src)
    assert main(["convert", str(src), str(tmp_path / "n16"), "--dtype", "bfloat16"]) == 0
    model, cfg = load_native(tmp_path / "n16")
    assert cfg.param_dtype == "bfloat16" and model.embed[...].dtype == jnp.bfloat16
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", "not-a-model"]) == 2
