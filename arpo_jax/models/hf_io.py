"""Hugging Face checkpoint import/export (safetensors), sharded placement, model creation.

``load_hf`` reads config.json and one or many ``*.safetensors`` files. Every tensor is read
shard by shard: for each device, only the slice that device holds is read from the
(memory-mapped) file, transformed to our layout and placed, so a large model is never
materialised whole on one device. All tensor names and shapes are checked against the
architecture before any data is read, so a bad checkpoint fails with a message naming the
tensor and nothing half-loaded is returned.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors import safe_open
from safetensors.numpy import save_file

from arpo_jax.models.config import DTYPES, ModelConfig, dtype_name
from arpo_jax.models.sharding import state_shardings
from arpo_jax.models.transformer import Transformer

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not match the architecture."""


# ------------------------------------------------------------------ name / layout mapping
# kind: how our array relates to the HF tensor.
#   copy   same layout               T      ours = hf.T (2-D)
#   in_heads  ours [D, N, H] = hf[N*H, D].T reshaped
#   out_heads ours [N, H, D] = hf[D, N*H].T reshaped
#   heads     ours [N, H]    = hf[N*H] reshaped
def _hf_name_and_kind(path: tuple) -> tuple[str, str]:
    if path == ("embed",):
        return "model.embed_tokens.weight", "copy"
    if path == ("lm_head",):
        return "lm_head.weight", "T"
    if path == ("final_norm", "scale"):
        return "model.norm.weight", "copy"
    if path[0] != "layers":
        raise KeyError(path)
    prefix = f"model.layers.{path[1]}."
    rest = path[2:]
    table = {
        ("input_norm", "scale"): ("input_layernorm.weight", "copy"),
        ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", "copy"),
        ("attn", "q_proj"): ("self_attn.q_proj.weight", "in_heads"),
        ("attn", "k_proj"): ("self_attn.k_proj.weight", "in_heads"),
        ("attn", "v_proj"): ("self_attn.v_proj.weight", "in_heads"),
        ("attn", "o_proj"): ("self_attn.o_proj.weight", "out_heads"),
        ("attn", "q_bias"): ("self_attn.q_proj.bias", "heads"),
        ("attn", "k_bias"): ("self_attn.k_proj.bias", "heads"),
        ("attn", "v_bias"): ("self_attn.v_proj.bias", "heads"),
        ("attn", "o_bias"): ("self_attn.o_proj.bias", "copy"),
        ("attn", "q_norm", "scale"): ("self_attn.q_norm.weight", "copy"),
        ("attn", "k_norm", "scale"): ("self_attn.k_norm.weight", "copy"),
        ("mlp", "gate_proj"): ("mlp.gate_proj.weight", "T"),
        ("mlp", "up_proj"): ("mlp.up_proj.weight", "T"),
        ("mlp", "down_proj"): ("mlp.down_proj.weight", "T"),
    }
    name, kind = table[tuple(rest)]
    return prefix + name, kind


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "copy":
        return shape
    if kind == "T":
        return shape[::-1]
    if kind == "in_heads":
        d, n, h = shape
        return (n * h, d)
    if kind == "out_heads":
        n, h, d = shape
        return (d, n * h)
    if kind == "heads":
        n, h = shape
        return (n * h,)
    raise ValueError(kind)


def _read_slice(kind: str, reader, shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Reads from ``reader`` (a safetensors slice) only what our ``index`` of ``shape`` needs."""
    idx = tuple(slice(*s.indices(dim)) for s, dim in zip(index, shape))
    if kind == "copy":
        return reader[idx]
    if kind == "T":
        return reader[idx[::-1]].T
    if kind == "in_heads":  # ours [D, N, H] ← hf [N*H, D]
        sd, sn, sh = idx
        h = shape[2]
        block = reader[sn.start * h: sn.stop * h, sd]  # [n*H, d]
        return block.T.reshape(block.shape[1], sn.stop - sn.start, h)[:, :, sh]
    if kind == "out_heads":  # ours [N, H, D] ← hf [D, N*H]
        sn, sh, sd = idx
        h = shape[1]
        block = reader[sd, sn.start * h: sn.stop * h]  # [d, n*H]
        return block.T.reshape(sn.stop - sn.start, h, block.shape[0])[:, sh, :]
    if kind == "heads":  # ours [N, H] ← hf [N*H]
        sn, sh = idx
        h = shape[1]
        return reader[sn.start * h: sn.stop * h].reshape(sn.stop - sn.start, h)[:, sh]
    raise ValueError(kind)


def _to_hf(kind: str, arr: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return arr
    if kind == "T":
        return np.ascontiguousarray(arr.T)
    if kind == "in_heads":
        d, n, h = arr.shape
        return np.ascontiguousarray(arr.reshape(d, n * h).T)
    if kind == "out_heads":
        n, h, d = arr.shape
        return np.ascontiguousarray(arr.reshape(n * h, d).T)
    if kind == "heads":
        return arr.reshape(-1)
    raise ValueError(kind)


def _unwrap(leaf):
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _flat_params(state) -> list[tuple[tuple, object]]:
    """(path, raw leaf) pairs of an nnx.State, Variables unwrapped."""
    return [(tuple(path), _unwrap(leaf)) for path, leaf in nnx.to_flat_state(state)]


# ---------------------------------------------------------------------------- creation
def _abstract(cfg: ModelConfig, seed: int = 0):
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    return nnx.split(abstract)


def create_model(cfg: ModelConfig, *, seed: int = 0, mesh: Mesh | None = None) -> Transformer:
    """A randomly initialised model; with ``mesh``, every parameter is created sharded."""
    if mesh is None:
        return Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, abstract_state = _abstract(cfg, seed)
    shardings = state_shardings(abstract_state, mesh)

    def init():
        return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))[1]

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------ import
def _index_checkpoint(path: Path) -> dict[str, Path]:
    """tensor name → safetensors file, from the index file or by scanning the files."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' mapping")
        out = {}
        for name, fname in weight_map.items():
            f = path / fname
            if not f.is_file():
                raise CheckpointError(f"{index}: tensor {name!r} points to missing file {fname!r}")
            out[name] = f
        return out
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {str(path)!r}")
    out = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as sf:
            for name in sf.keys():
                out[name] = f
    return out


def _checkpoint_config(path: Path, dtype, param_dtype, overrides: dict) -> ModelConfig:
    """The ``ModelConfig`` of HF directory ``path``: storage dtype ``param_dtype`` (default the
    checkpoint's own, fp32 if unknown), compute dtype ``dtype`` (default the storage dtype)."""
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist (hub names are not fetched)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{str(path)!r} has no config.json")
    hf_cfg = json.loads((path / "config.json").read_text())
    ckpt_dtype = hf_cfg.get("torch_dtype") or hf_cfg.get("dtype")
    dtype, param_dtype = dtype_name(dtype), dtype_name(param_dtype)
    if param_dtype is None:
        param_dtype = ckpt_dtype if ckpt_dtype in ("float32", "bfloat16") else "float32"
    return ModelConfig.from_hf_config(hf_cfg, param_dtype=param_dtype, dtype=dtype or param_dtype, **overrides)


def _tensor_plan(cfg: ModelConfig, flat, names: dict[str, Path]) -> list[tuple[tuple, str, str, tuple]]:
    """(path, HF name, layout kind, our shape) of every parameter; refuses missing or extra tensors."""
    plan, expected = [], set()
    for p, leaf in flat:
        name, kind = _hf_name_and_kind(p)
        expected.add(name)
        if name not in names:
            raise CheckpointError(f"checkpoint is missing tensor {name!r}")
        plan.append((p, name, kind, tuple(leaf.shape)))
    unexpected = [n for n in names if n not in expected and not n.endswith(_IGNORED_SUFFIXES)
                  and not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    if unexpected:
        raise CheckpointError(f"checkpoint has tensors the {cfg.family} architecture does not use, "
                              f"e.g. {sorted(unexpected)[0]!r} ({len(unexpected)} in all)")
    return plan


def _read_leaves(plan, names: dict[str, Path], dtype, shardings: dict) -> dict[tuple, jax.Array]:
    """Every tensor of ``plan`` placed with its sharding (one device when absent), each device
    reading only its slice; all shapes are checked before any data is read."""
    handles: dict[Path, object] = {}
    try:
        for _, name, kind, shape in plan:
            f = names[name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="numpy")
            got = tuple(handles[f].get_slice(name).get_shape())
            want = _hf_shape(kind, shape)
            if got != want:
                raise CheckpointError(f"tensor {name!r} has shape {got}, expected {want}")
        one_device = NamedSharding(Mesh(np.asarray([jax.devices()[0]]), ("d",)), P())
        leaves = {}
        for p, name, kind, shape in plan:
            reader = handles[names[name]].get_slice(name)

            def cb(index, reader=reader, kind=kind, shape=shape):
                return np.asarray(_read_slice(kind, reader, shape, index)).astype(dtype)

            leaves[p] = jax.make_array_from_callback(shape, shardings.get(p) or one_device, cb)
    finally:
        handles.clear()
    return leaves


def load_hf(path: str | Path, *, dtype=None, param_dtype=None, mesh: Mesh | None = None,
            **config_overrides) -> tuple[Transformer, ModelConfig]:
    """Loads a local HF checkpoint directory → ``(model, config)``.

    dtype / param_dtype: compute and storage dtypes ("float32" or "bfloat16", or the JAX / NumPy
    dtype); by default the checkpoint's own dtype for storage (fp32 if unknown) and the same for
    compute.
    mesh: place each parameter with its partition rule on this mesh (default: one device).
    Hub names are never fetched: ``path`` must be an existing directory.
    """
    path = Path(path)
    cfg = _checkpoint_config(path, dtype, param_dtype, config_overrides)
    names = _index_checkpoint(path)
    graphdef, abstract_state = _abstract(cfg)
    flat = _flat_params(abstract_state)
    plan = _tensor_plan(cfg, flat, names)
    shardings = dict(_flat_params(state_shardings(abstract_state, mesh))) if mesh is not None else {}
    leaves = _read_leaves(plan, names, jnp.dtype(cfg.jnp_param_dtype), shardings)
    state = nnx.from_flat_state([(p, leaves[p]) for p, _ in flat])
    return nnx.merge(graphdef, state), cfg


# ------------------------------------------------------------------------------ export
def _fetch(x) -> np.ndarray:
    """The whole value of ``x`` on this host. An array spread over several processes is
    all-gathered (a collective: every process must call this for it, in the same order)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_hf(model: Transformer, cfg: ModelConfig, path: str | Path, *, tokenizer=None,
            max_shard_bytes: int = 4 << 30, dtype=None) -> Path:
    """Writes ``model`` as a HF checkpoint directory that ``AutoModelForCausalLM`` loads.

    dtype: storage dtype of the written tensors, by name or as a JAX / NumPy dtype (default: the
    model's param dtype).
    Tensors are gathered one at a time; files are split at ``max_shard_bytes`` with an index.
    Multi-host: every process must call this (parameters sharded over several processes are
    all-gathered); only process 0 writes, the others return the same path.
    """
    path = Path(path)
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
    dtype = dtype_name(dtype) or cfg.param_dtype
    np_dtype = jnp.dtype(DTYPES[dtype])
    state = nnx.state(model, nnx.Param)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for p, leaf in _flat_params(state):
        name, kind = _hf_name_and_kind(p)
        host = _fetch(leaf)
        if not writer:
            continue
        arr = _to_hf(kind, host.astype(np_dtype))
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    if not writer:
        return path
    for old in path.glob("model*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(a.nbytes for s in shards for a in s.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf_cfg = cfg.to_hf_config()
    hf_cfg["torch_dtype"] = dtype
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
