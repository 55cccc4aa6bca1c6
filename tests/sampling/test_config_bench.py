"""Buckets, config validation, top-k/top-p truncation, and a smoke run of the benchmark."""

import argparse
import json

import jax.numpy as jnp
import numpy as np
import pytest

from arpo_jax.sampling import SamplingConfig, bucket, top_k_top_p_filter
from arpo_jax.sampling.config import prefill_length, window_size


def test_buckets():
    assert [bucket(n, 1, 12) for n in (1, 2, 3, 5, 9, 12)] == [1, 2, 4, 8, 12, 12]
    with pytest.raises(ValueError):
        bucket(13, 1, 12)
    cfg = SamplingConfig(min_prefill_bucket=16, prefill_chunk=64, min_window=32)
    assert [prefill_length(n, cfg, 1000) for n in (0, 16, 17, 64, 65, 200)] == [16, 16, 32, 64, 128, 256]
    assert prefill_length(70, cfg, 96) == 128  # whole prefill chunks (writes past the cache are dropped)
    assert [window_size(n, cfg, 100) for n in (1, 33, 64, 65, 99, 150)] == [32, 64, 64, 100, 100, 100]
    assert window_size(5, cfg.replace(attention_window=False), 100) == 100


def test_config_validation():
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(chunk_size=0), dict(stop_strings=("",))):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)
    cfg = SamplingConfig(greedy=True, temperature=0.0, stop_strings=["</a>"], eos_ids=[np.int64(3)])
    assert cfg.effective_temperature == 1.0 and cfg.stop_strings == ("</a>",) and cfg.eos_ids == (3,)
    hash(cfg)


def test_truncate_top_k_top_p():
    logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    keep = lambda x: np.isfinite(np.asarray(x))  # noqa: E731
    np.testing.assert_array_equal(keep(top_k_top_p_filter(logits, 2, 1.0)), [[1, 1, 0, 0], [1, 1, 1, 1]])  # ties kept
    np.testing.assert_array_equal(keep(top_k_top_p_filter(logits, 0, 0.6)), [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(keep(top_k_top_p_filter(logits, 0, 0.3)), [[1, 0, 0, 0], [1, 1, 1, 1]])
    # top-p acts on the top-k renormalised: masses before each token 0, .44, .78 (not 0, .4, .7)
    np.testing.assert_array_equal(keep(top_k_top_p_filter(logits, 3, 0.75)), [[1, 1, 0, 0], [1, 1, 1, 1]])
    assert top_k_top_p_filter(logits, 0, 1.0) is logits


def test_benchmark_smoke(tmp_path):
    from arpo_jax.apps import sampler_bench as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "sampler.json"
    args = parser.parse_args(["--batch-sizes", "2", "--prompt-len", "4", "--new-tokens", "8", "--layers", "1",
                              "--hidden", "64", "--heads", "2", "--kv-heads", "1", "--ffn", "64", "--vocab", "64",
                              "--chunk", "4", "--repeats", "1", "--out", str(out)])
    result = bench.run(args)
    saved = json.loads(out.read_text())
    row = saved["batches"]["2"]
    for key in ("arpo_jax", "arpo_jax_no_entropy", "transformers"):
        assert row[key]["tokens_per_s"] > 0
    assert "speedup_vs_transformers" in row and "entropy_overhead" in row
    assert saved["fork"]["prefill_tokens_per_branch"] == 0 and saved["fork"]["branches_decoded_after_fork"] == 7
    assert result["written_to"] == str(out)
