"""Bad checkpoints fail with a message naming the tensor or field; nothing half-loaded."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from arpo_jax.models import CheckpointError, UnsupportedModelError, load_hf
from tests.models.hf_tiny import save_tiny


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    save_tiny("llama", path)
    return path


def _copy(good, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(good, dst)
    return dst


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def test_missing_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf(tmp_path / "Qwen/Qwen2.5-7B-Instruct")


def test_missing_tensor_is_named(good, tmp_path):
    path = _copy(good, tmp_path)
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_hf(path)


def test_wrong_shape_is_named(good, tmp_path):
    path = _copy(good, tmp_path)

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]

    _edit_tensors(path, shrink)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape"):
        load_hf(path)


def test_unexpected_tensor_is_named(good, tmp_path):
    path = _copy(good, tmp_path)
    _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": np.ones(16, np.float32)}))
    with pytest.raises(CheckpointError, match="q_norm"):
        load_hf(path)


def test_unsupported_architecture_is_named(good, tmp_path):
    path = _copy(good, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "mixtral"
    cfg["architectures"] = ["MixtralForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="model_type='mixtral'"):
        load_hf(path)


def test_missing_config_field_is_named(good, tmp_path):
    path = _copy(good, tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="num_hidden_layers"):
        load_hf(path)


def test_sharded_index_with_missing_file(good, tmp_path):
    path = _copy(good, tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:5]}, str(path / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {k: ("model-00001-of-00002.safetensors" if i < 5 else "model-00002-of-00002.safetensors")
                            for i, k in enumerate(names)}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing file 'model-00002-of-00002.safetensors'"):
        load_hf(path)
    save_file({k: tensors[k] for k in names[5:]}, str(path / "model-00002-of-00002.safetensors"))
    model, cfg = load_hf(path)  # complete now: loads
    assert cfg.num_layers == 2
