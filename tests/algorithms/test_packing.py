"""Tree packing against straightforward numpy references: every unique token once, each path
seen exactly as its unpacked sequence (tokens, RoPE positions, visible keys, predecessors)."""

import numpy as np
import pytest

from arpo_jax.algorithms.packing import (Forest, choose_rows, first_fit, layout_tree, length_bucket, pack_forest,
                                        row_bucket)
from tests.algorithms.arpo_trees import arpo_forest


def _owner_ref(forest: Forest, b: int, t: int) -> int:
    """The trajectory that generated response token t of b, walking up the tree one step at a time."""
    while forest.parent[b] >= 0 and t < forest.branch_pos[b]:
        b = int(forest.parent[b])
    return b


def _sequence(forest: Forest, b: int) -> np.ndarray:
    return np.concatenate([forest.prompt[b, :forest.prompt_len[b]], forest.tokens[b, :forest.length[b]]])


def _shuffled(forest: Forest, rng) -> Forest:
    """The same forest with the trajectories in a random order (parents remapped)."""
    perm = rng.permutation(len(forest.length))
    inv = np.argsort(perm)
    parent = np.where(forest.parent[perm] >= 0, inv[np.maximum(forest.parent[perm], 0)], -1)
    return Forest(forest.prompt[perm], forest.prompt_len[perm], forest.tokens[perm], forest.length[perm], parent,
                  forest.branch_pos[perm], forest.group[perm])


def _check(forest: Forest, packed, row_len: int):
    seen = {}
    for b in range(len(forest.length)):
        seq = _sequence(forest, b)
        n, p = len(seq), int(forest.prompt_len[b])
        r, c = packed.row[b, :n], packed.col[b, :n]
        assert packed.valid[b, :n].all() and not packed.valid[b, n:].any()
        np.testing.assert_array_equal(packed.tokens[r, c], seq)
        np.testing.assert_array_equal(packed.positions[r, c], np.arange(n))
        np.testing.assert_array_equal(packed.pred[r[1:], c[1:]], c[:-1])  # the path predecessor
        for t in range(n):  # query (b, t) sees exactly the slots of b's tokens 0..t
            keys = np.arange(row_len)
            visible = (keys <= c[t]) & (c[t] < packed.key_end[r[t]])
            assert set(np.flatnonzero(visible)) == set(c[: t + 1].tolist()), (b, t)
            node = ("prompt", forest.group[b], t) if t < p else ("own", _owner_ref(forest, b, t - p), t)
            assert seen.setdefault(node, (r[t], c[t])) == (r[t], c[t])  # one slot per tree node
    assert len(set(seen.values())) == len(seen)  # ... and one node per slot
    real = packed.key_end > 0
    assert real.sum() == len(seen) == forest.tree_sizes().sum()  # every unique token exactly once


@pytest.mark.parametrize("seed", range(6))
def test_random_arpo_forests_pack_exactly(seed):
    rng = np.random.default_rng(seed)
    forest, _ = arpo_forest(rng, prompts=3, m=int(rng.integers(1, 9)), roots=int(rng.integers(1, 3)))
    if seed % 2:
        forest = _shuffled(forest, rng)
    sizes = forest.tree_sizes()
    row_len = length_bucket(int(sizes.max()), minimum=8)
    rows = first_fit(sizes, row_len)[2]
    packed = pack_forest(forest, row_len, rows + 1, int((forest.prompt_len + forest.length).max()) + 3, row_base=0)
    _check(forest, packed, row_len)
    assert (packed.key_end[-1] == 0).all()  # the extra row is padding


def test_hand_built_tree_layout():
    """Prompt [1 2]; a root [3 4 5]; b forks the root after 1 token ([3] + [6 7]); c forks b
    after 2 tokens ([3 6] + [8]); d forks the root after 3 tokens (shares [3 4 5], adds [9])."""
    prompt = np.asarray([[1, 2]] * 4)
    tokens = np.asarray([[3, 4, 5, 0], [3, 6, 7, 0], [3, 6, 8, 0], [3, 4, 5, 9]])
    forest = Forest(prompt, np.full(4, 2), tokens, np.asarray([3, 3, 3, 4]), np.asarray([-1, 0, 1, 0]),
                    np.asarray([0, 1, 2, 3]), np.zeros(4, int))
    tree = layout_tree(forest, np.arange(4), forest.owners())
    # root segment, then forks of the root latest first (d at 3, then b at 1 with its fork c)
    np.testing.assert_array_equal(tree.tokens, [1, 2, 3, 4, 5, 9, 6, 7, 8])
    np.testing.assert_array_equal(tree.positions, [0, 1, 2, 3, 4, 5, 3, 4, 4])
    np.testing.assert_array_equal(tree.key_end, [9, 9, 9, 6, 6, 6, 9, 8, 9])
    np.testing.assert_array_equal(tree.pred, [0, 0, 1, 2, 3, 4, 2, 6, 6])
    np.testing.assert_array_equal(tree.cols[2], [0, 1, 2, 6, 8])


def test_first_fit_and_buckets():
    row, offset, used = first_fit(np.asarray([5, 9, 3, 4]), 10)
    assert used == 3 and (row[1], offset[1]) == (0, 0)
    assert (row[0], offset[0]) == (1, 0) and (row[3], offset[3]) == (1, 5) and (row[2], offset[2]) == (2, 0)
    with pytest.raises(ValueError, match="does not fit"):
        first_fit(np.asarray([11]), 10)
    assert [length_bucket(n, 64) for n in (1, 64, 65, 2100, 2400)] == [64, 64, 72, 2304, 2560]
    assert [row_bucket(n) for n in (0, 1, 2, 3, 4, 5, 7, 9, 13)] == [1, 1, 2, 3, 4, 6, 8, 12, 16]
    assert [row_bucket(n, 4) for n in (1, 4, 5, 9, 13)] == [4, 4, 8, 12, 16]


def _by_brute_force(parts, minimum, per_octave, multiple, slack):
    """Every row count's shortest fitting bucketed length; the shortest row among those within
    ``slack`` of the mean tokens (or at the fewest slots)."""
    fresh = []
    for r in range(1, max(len(x) for x in parts) * multiple + 1):
        if row_bucket(r, multiple) != r:
            continue
        n = length_bucket(max(max(x) for x in parts), minimum, per_octave)
        while any(first_fit(np.asarray(x), n)[2] > r for x in parts):
            n = length_bucket(n + 1, minimum, per_octave)
        fresh.append((n, r))
    fewest = min(n * r for n, r in fresh)
    bound = max(fewest, (1 + slack) * sum(x.sum() for x in parts) / len(parts))
    return min((n, r) for n, r in fresh if n * r <= bound), fewest


@pytest.mark.parametrize("seed", range(8))
def test_choose_rows_is_the_shortest_row_within_the_slack(seed):
    rng = np.random.default_rng(seed)
    multiple = int(rng.choice([1, 1, 2]))
    parts = [rng.integers(200, 3000, int(rng.integers(1, 7))) for _ in range(int(rng.integers(1, 4)))]
    row_len, rows = choose_rows(parts, 64, 32, multiple)
    assert all(first_fit(x, row_len)[2] <= rows for x in parts)
    assert row_bucket(rows, multiple) == rows and length_bucket(row_len, 64, 32) == row_len
    want, fewest = _by_brute_force(parts, 64, 32, multiple, 0.04)
    assert (row_len, rows) == want
    if multiple == 1:  # one row holding the largest part is a candidate: at most a bucket step of padding
        assert fewest <= max(x.sum() for x in parts) * (1 + 1 / 32)


def test_choose_rows_prefers_shorter_rows_and_reuses_compiled_shapes():
    # four trees of 1,000: one row of 4,032 (bucket of 4,000), two of 2,016 or four of 1,008
    parts = [np.full(4, 1000)]
    assert choose_rows(parts, 64, 32) == (1008, 4)
    assert choose_rows(parts, 64, 32, reuse=[(2080, 2), (4096, 1)]) == (2080, 2)  # 4 % over: compiled, taken
    assert choose_rows(parts, 64, 32, reuse=[(2112, 2), (1008, 8)]) == (1008, 4)  # 5.6 % / 100 % over: not
