"""Model configuration: one dataclass for Qwen2/2.5, Qwen3 and Llama-3, with presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

# Hugging Face `architectures` / `model_type` values we can load, mapped to our family name.
SUPPORTED_MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Cores of the no-cache attention (see models.attention_backends).
ATTENTION_IMPLS = ("reference", "blockwise", "pallas", "cudnn")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or a config field is not supported."""


def dtype_name(dtype: Any) -> str | None:
    """The ``ModelConfig`` name of a dtype ("float32", "bfloat16", "float16"), given as that name
    or as a JAX / NumPy dtype or scalar type (``jnp.bfloat16``, ``np.dtype("float32")``); None stays None."""
    if dtype is None or isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported (use one of {sorted(DTYPES)})")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (names follow HF where they exist).

    family: "qwen2" (q/k/v bias), "qwen3" (q/k RMSNorm, explicit head_dim) or "llama".
    rope_scaling: None or a dict as in HF config.json (only ``rope_type: llama3`` is used).
    param_dtype / dtype: storage and compute dtypes ("float32" or "bfloat16").
    attention_impl: core of the no-cache attention, one of ``ATTENTION_IMPLS`` (see
    ``models.attention_backends``); attention_block_q / _k: its query / key block sizes.
    """

    family: str = "qwen2"
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qkv_bias: bool = True
    qk_norm: bool = False
    attention_bias_o: bool = False
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    attention_impl: str = "reference"
    attention_block_q: int = 512
    attention_block_k: int = 512

    def __post_init__(self):
        if self.family not in SUPPORTED_MODEL_TYPES.values():
            raise UnsupportedModelError(f"model family {self.family!r} is not supported (use qwen2, qwen3 or llama)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if min(self.attention_block_q, self.attention_block_k) < 1:
            raise ValueError(f"attention_block_q/_k must be positive, got {self.attention_block_q}, "
                             f"{self.attention_block_k}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("llama3", "default", None):
                raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported (only llama3)")

    def __hash__(self):  # rope_scaling is a dict; hash the canonical JSON instead
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Exact parameter count (embedding and lm_head counted once when tied)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        nh, kh, h = self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * nh * h + 2 * d * kh * h + nh * h * d
        if self.qkv_bias:
            attn += nh * h + 2 * kh * h
        if self.qk_norm:
            attn += 2 * h
        layer = attn + 3 * d * f + 2 * d
        total = self.num_layers * layer + v * d + d
        if not self.tie_word_embeddings:
            total += v * d
        return total

    # ---------------------------------------------------------------- HF config bridge
    @classmethod
    def from_hf_config(cls, hf: Any, **overrides) -> "ModelConfig":
        """Builds a config from a HF config (a ``PretrainedConfig``, a dict or a config.json path)."""
        if isinstance(hf, (str, Path)):
            path = Path(hf)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"no config.json at {str(path)!r}")
            hf = json.loads(path.read_text())
        if not isinstance(hf, dict):
            hf = hf.to_dict()
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            archs = hf.get("architectures")
            raise UnsupportedModelError(
                f"unsupported architecture: model_type={model_type!r} architectures={archs!r} "
                f"(supported model_type: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        family = SUPPORTED_MODEL_TYPES[model_type]
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if field not in hf:
                raise UnsupportedModelError(f"config.json is missing field {field!r}")
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        rope_scaling = hf.get("rope_scaling")
        rope_theta = hf.get("rope_theta")
        rope_params = hf.get("rope_parameters")  # transformers >= 5 nests rope settings here
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_params.get("rope_type", "default") != "default":
                rope_scaling = rope_params
        if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        if family == "qwen2" and hf.get("use_sliding_window", False):
            raise UnsupportedModelError("config field use_sliding_window=true is not supported")
        kw = dict(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=dict(rope_scaling) if rope_scaling else None,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            attention_bias_o=family != "qwen2" and bool(hf.get("attention_bias", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf_config(self) -> dict:
        """The config.json dict transformers needs to rebuild this architecture."""
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[self.family]
        out = {
            "architectures": [arch],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "torch_dtype": self.param_dtype,
        }
        if self.family == "llama":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = False
        if self.family == "qwen3":
            out["attention_bias"] = False
        if self.family == "qwen2":
            out["use_sliding_window"] = False
        return out


def _qwen25(hidden, inter, layers, heads, kv, tie, vocab=151936):
    return ModelConfig(family="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=tie, qkv_bias=True,
                       max_position_embeddings=32768)


def _qwen3(hidden, inter, layers, heads, kv, tie):
    return ModelConfig(family="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=128, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=tie, qkv_bias=False, qk_norm=True,
                       max_position_embeddings=40960)


def _llama3(hidden, inter, layers, heads, kv, tie, factor):
    return ModelConfig(family="llama", vocab_size=128256, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=tie, qkv_bias=False,
                       rope_scaling={"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       max_position_embeddings=131072)


# Values from the official config.json files of each release.
PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-0.5b": _qwen25(896, 4864, 24, 14, 2, True),
    "qwen2.5-1.5b": _qwen25(1536, 8960, 28, 12, 2, True),
    "qwen2.5-3b": _qwen25(2048, 11008, 36, 16, 2, True),
    "qwen2.5-7b": _qwen25(3584, 18944, 28, 28, 4, False, vocab=152064),
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, 8, True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, 8, True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, 8, True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, 8, False),
    "qwen3-14b": _qwen3(5120, 17408, 40, 40, 8, False),
    "llama-3.1-8b": _llama3(4096, 14336, 32, 32, 8, False, 8.0),
    "llama-3.2-1b": _llama3(2048, 8192, 16, 32, 8, True, 32.0),
    "llama-3.2-3b": _llama3(3072, 8192, 28, 24, 8, True, 32.0),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A preset by name (case-insensitive, e.g. ``"Qwen2.5-7B"``), with field overrides."""
    key = name.lower().removesuffix("-instruct")
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[key].replace(**overrides)
