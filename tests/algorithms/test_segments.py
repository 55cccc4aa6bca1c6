"""Macro-action segments: ids from the loss mask, segment <-> token maps, soft attribution."""

import jax.numpy as jnp
import numpy as np

from arpo_jax.algorithms import advantages as adv
from arpo_jax.algorithms import segments as seg

# Two trajectories: model text, tool result, model text, tool result, model text; padding.
MASK = np.array(
    [
        [1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
    ]
)
IDS = np.array(
    [
        [0, 0, 0, -1, -1, 1, 1, -1, -1, 2, 2, -1],
        [0, 0, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1],
    ]
)


def test_segment_ids_from_mask():
    np.testing.assert_array_equal(seg.segment_ids_from_mask(jnp.asarray(MASK)), IDS)
    np.testing.assert_array_equal(seg.segment_ids_from_mask(jnp.zeros((1, 4))), [[-1, -1, -1, -1]])


def test_expand_and_reduce_match_numpy():
    rng = np.random.default_rng(0)
    S = 4
    seg_values = rng.normal(size=(2, S))
    expanded = np.where(IDS >= 0, seg_values[np.arange(2)[:, None], np.maximum(IDS, 0)], 0.0)
    ids = jnp.asarray(IDS)
    np.testing.assert_allclose(seg.expand_segment_values(jnp.asarray(seg_values), ids), expanded, rtol=1e-6)

    tok = rng.normal(size=MASK.shape)
    sums, means = np.zeros((2, S)), np.zeros((2, S))
    for b in range(2):
        for s in range(S):
            sel = IDS[b] == s
            sums[b, s] = tok[b, sel].sum()
            means[b, s] = tok[b, sel].mean() if sel.any() else 0.0
    np.testing.assert_allclose(seg.reduce_to_segments(jnp.asarray(tok), ids, S, "sum"), sums, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seg.reduce_to_segments(jnp.asarray(tok), ids, S, "mean"), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(seg.segment_present(jnp.asarray(IDS), S), [[1, 1, 1, 0], [1, 1, 0, 0]])
    # reduce(mean) then expand is the identity on segment-constant token values
    round_trip = seg.reduce_to_segments(seg.expand_segment_values(jnp.asarray(seg_values), ids), ids, S)
    np.testing.assert_allclose(round_trip[0, :3], seg_values[0, :3], rtol=1e-6)


def test_soft_attribution_via_segments_equals_token_level():
    seq_adv = adv.grpo_advantages(jnp.array([1.0, 0.0]), jnp.array([0, 0]))
    ids = seg.segment_ids_from_mask(jnp.asarray(MASK))
    seg_adv = seg.soft_segment_advantages(seq_adv, ids, num_segments=5)
    via_segments = seg.expand_segment_values(seg_adv, ids)
    np.testing.assert_allclose(via_segments, adv.soft_token_advantages(seq_adv, jnp.asarray(MASK)), rtol=1e-6)
    np.testing.assert_allclose(seg_adv[1], [seq_adv[1], seq_adv[1], 0, 0, 0], rtol=1e-6)
