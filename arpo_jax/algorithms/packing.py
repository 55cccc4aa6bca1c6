"""Rollout trees packed into rows so that every unique token is computed once.

Shapes: B trajectories, P prompt tokens, Tr response tokens, T = P + Tr per-trajectory
positions, R packed rows, L packed columns.

Layout. A prompt's tree (its trajectories, ``parent`` / ``branch_pos`` as in ``tree``) is laid
out depth-first: the prompt once, then each trajectory's own segment (the response tokens it
generated itself, [branch_pos, length) in the ``token_owner`` sense), each followed by the
segments forked from it, latest fork point first. A token's descendants are then the
contiguous columns after it, so attention is the interval mask ``k <= q < key_end[k]``
(``models.attention``); ``positions`` are indices along the token's own root-to-leaf path
(prompt included), so RoPE sees each path exactly as the unpacked sequence. Several trees share
a row (first-fit decreasing; ``choose_rows`` picks the row length and count that waste least, a
tree never split); padding has ``key_end`` 0 (visible to nothing).

Scoring. The token at packed column c is predicted by the hidden state of its path predecessor,
``pred[c]`` (c - 1 inside a segment; the fork point for a segment's first token, which in packed
order is *not* the column before it). So ``logits(hidden[pred[c]])[tokens[c]]`` is the
log-prob of column c: one vocabulary projection per unique token (a fork point is projected once
per child segment, i.e. once per distinct successor), never one per trajectory holding it.

Gather map. ``row[b, t]``, ``col[b, t]``: the packed slot of position t (prompt + response) of
trajectory b, so a per-trajectory [B, T] view of any packed array is ``x[row, col]`` — the
log-prob of token (b, t) included, since its slot's value is the log-prob given its own path.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from arpo_jax.algorithms.tree import token_owner


@dataclasses.dataclass
class Forest:
    """Host arrays of a set of trees (one per prompt group) in trajectory order.

    prompt: [B, P] prompt ids (right-padded); prompt_len: [B]; tokens: [B, Tr] response ids;
    length: [B] response lengths; parent: [B] batch index or -1; branch_pos: [B]; group: [B]
    prompt id (the trajectories of a group share one prompt and form one tree).
    """

    prompt: np.ndarray
    prompt_len: np.ndarray
    tokens: np.ndarray
    length: np.ndarray
    parent: np.ndarray
    branch_pos: np.ndarray
    group: np.ndarray

    def owners(self) -> np.ndarray:
        """[B, Tr] ``token_owner`` of every response token (Tr rounded up to a power of two
        for the call, so varying lengths reuse a few compiled loops)."""
        tr = max(int(self.tokens.shape[1]), 1)
        width = 1 << (tr - 1).bit_length()
        own = token_owner(jnp.asarray(self.parent, jnp.int32), jnp.asarray(self.branch_pos, jnp.int32), width)
        return np.asarray(own)[:, :tr]

    def trees(self) -> list[np.ndarray]:
        """Trajectory indices of each tree, in order of first appearance."""
        _, first, inverse = np.unique(self.group, return_index=True, return_inverse=True)
        return [np.flatnonzero(inverse == g) for g in np.argsort(first, kind="stable")]

    def tree_sizes(self) -> np.ndarray:
        """Unique tokens of each tree (``trees()`` order): its prompt plus every own segment."""
        own = np.maximum(self.length - np.where(self.parent >= 0, self.branch_pos, 0), 0)
        return np.asarray([int(self.prompt_len[t[0]]) + int(own[t].sum()) for t in self.trees()], np.int64)


@dataclasses.dataclass
class PackedTree:
    """One tree laid out depth-first: tokens / positions / key_end / pred [n] (columns relative
    to the tree's start) and ``cols[b]``: the column of each prompt + response position of
    trajectory b ([prompt_len + length[b]])."""

    tokens: np.ndarray
    positions: np.ndarray
    key_end: np.ndarray
    pred: np.ndarray
    cols: dict[int, np.ndarray]


def layout_tree(forest: Forest, members: np.ndarray, owner: np.ndarray) -> PackedTree:
    """Depth-first layout of the tree of trajectories ``members`` (see the module doc); ``owner``
    [B, Tr] from ``Forest.owners``."""
    p = int(forest.prompt_len[members[0]])
    bp = np.where(forest.parent >= 0, forest.branch_pos, 0)
    attach = {int(b): int(owner[b, bp[b] - 1]) if bp[b] > 0 else -1 for b in members}  # -1: the prompt
    children: dict[int, list[int]] = {}
    for b in sorted(attach, key=lambda c: (-bp[c], c)):  # latest fork point first
        children.setdefault(attach[b], []).append(b)
    start, end, order = {}, {}, []

    def place(b: int, n: int) -> int:  # b's own segment at column n, then its forks; → end column
        start[b] = n
        order.append(b)
        n += max(int(forest.length[b]) - int(bp[b]), 0)
        for c in children.get(b, []):
            n = place(c, n)
        end[b] = n
        return n

    n = p
    for b in children.get(-1, []):
        n = place(b, n)
    tokens, positions = np.zeros(n, np.int32), np.arange(n, dtype=np.int32)
    key_end, pred = np.full(n, n, np.int32), np.arange(-1, n - 1, dtype=np.int32)
    tokens[:p], pred[:1] = forest.prompt[members[0], :p], 0
    for b in order:
        lo, s, k = int(bp[b]), start[b], max(int(forest.length[b]) - int(bp[b]), 0)
        tokens[s:s + k] = forest.tokens[b, lo:lo + k]
        positions[s:s + k] = p + lo + np.arange(k)
        key_end[s:s + k] = s + k
        for c in children.get(b, []):  # the tokens up to c's fork point also see c's subtree
            key_end[s:s + int(bp[c]) - lo] = end[c]
        a = attach[b]
        if k:
            pred[s] = (p - 1 if p else s) if a == -1 else start[a] + lo - 1 - int(bp[a])
    cols = {}
    for b in members:
        t = np.arange(int(forest.length[b]))
        o = owner[b, t]
        seg_start = np.asarray([start[x] for x in o], np.int64).reshape(-1)
        cols[int(b)] = np.concatenate([np.arange(p), seg_start + t - bp[o]]).astype(np.int32)
    return PackedTree(tokens, positions, key_end, pred, cols)


def first_fit(sizes: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit decreasing of items of ``sizes`` into rows of ``row_len`` → (row [n], offset [n],
    rows used)."""
    if len(sizes) and int(np.max(sizes)) > row_len:
        raise ValueError(f"a tree of {int(np.max(sizes))} tokens does not fit a packed row of {row_len}")
    row, offset, free = np.zeros(len(sizes), np.int64), np.zeros(len(sizes), np.int64), []
    for i in np.argsort(-np.asarray(sizes), kind="stable"):
        r = next((j for j, f in enumerate(free) if f >= sizes[i]), len(free))
        if r == len(free):
            free.append(row_len)
        row[i], offset[i] = r, row_len - free[r]
        free[r] -= int(sizes[i])
    return row, offset, len(free)


def length_bucket(n: int, minimum: int = 64, per_octave: int = 8) -> int:
    """Smallest multiple of 2^k / ``per_octave`` >= max(n, minimum), 2^k the largest power of two
    <= n: at most 1 / per_octave of padding and ``per_octave`` shapes per doubling of n."""
    n = max(int(n), int(minimum), 1)
    step = max((1 << (n.bit_length() - 1)) // per_octave, 1)
    return -(-n // step) * step


def row_bucket(n: int, multiple: int = 1) -> int:
    """Smallest row count >= n (>= 1) among ``multiple`` × (1, 2, 3, 4, 6, 8, 12, …) (2^k and
    3 · 2^k): a few shapes per doubling, at most a third of the rows empty; ``multiple``: e.g. so
    that the rows split evenly over the devices of the batch axes."""
    m = max(int(multiple), 1)
    n = -(-max(int(n), 1) // m)
    power = 1 << (n - 1).bit_length()
    return m * (3 * power // 4 if power >= 4 and 3 * power // 4 >= n else power)


PACK_PER_OCTAVE = 32  # packed row lengths: <= 1/32 (3.1 %) of padding per row, 32 shapes per doubling
PACK_SLACK = 0.04  # packed slots may exceed the tokens by this much for shorter rows or a compiled shape


def _fewest_rows_of_each_length(parts: list[np.ndarray], minimum: int, per_octave: int, multiple: int
                                ) -> list[tuple[int, int]]:
    """(row_len, rows) for each row count r of ``row_bucket(·, multiple)`` up to one tree per row:
    the shortest bucketed length, from max(largest tree, ⌈largest part / r⌉), at which every part
    first-fits into r rows."""
    largest, total = max(int(x.max()) for x in parts), max(int(x.sum()) for x in parts)
    out, r, most = [], row_bucket(1, multiple), row_bucket(max(len(x) for x in parts), multiple)
    while r <= most:
        row_len = length_bucket(max(largest, -(-total // r)), minimum, per_octave)
        while any(first_fit(x, row_len)[2] > r for x in parts):
            row_len = length_bucket(row_len + 1, minimum, per_octave)
        out.append((row_len, r))
        r = row_bucket(r + 1, multiple)
    return out


def choose_rows(parts: list[np.ndarray], minimum: int = 64, per_octave: int = PACK_PER_OCTAVE,
                multiple: int = 1, reuse=(), slack: float = PACK_SLACK) -> tuple[int, int]:
    """(row_len, rows) for packing each of ``parts`` (the tree sizes of one micro-batch) into
    ``rows`` rows of ``row_len`` (first-fit decreasing, a tree never split).

    Candidates: for each row count r of ``row_bucket(·, multiple)``, the shortest bucketed length
    that fits. Allowed: those whose slots rows × row_len are within ``slack`` of the parts' mean
    tokens, or no more than the fewest slots of any candidate (with ``multiple`` = 1 one row per
    part is a candidate: at most 1 / ``per_octave`` over the largest part). ``reuse`` (shapes
    already compiled) is looked at first: the shortest-row one that fits and is allowed is taken,
    so steady-state steps do not recompile; else the shortest-row allowed candidate (shorter rows:
    less attention work, more parallel rows)."""
    parts = [np.asarray(x, np.int64) for x in parts if len(x)] or [np.ones(1, np.int64)]
    fresh = _fewest_rows_of_each_length(parts, minimum, per_octave, multiple)
    bound = max(min(n * r for n, r in fresh), (1 + slack) * sum(int(x.sum()) for x in parts) / len(parts))
    largest = max(int(x.max()) for x in parts)
    known = [(n, n * r, r) for n, r in reuse if n * r <= bound and largest <= n
             and all(first_fit(x, n)[2] <= r for x in parts)]
    n, _, r = min(known or [(n, n * r, r) for n, r in fresh if n * r <= bound])
    return n, r


@dataclasses.dataclass
class PackedRows:
    """Trees packed into rows: tokens / positions / key_end / pred [R, L] (``pred`` = the column
    of each token's path predecessor, itself for a tree's first token and padding), and the
    gather map row / col [B, T] (padding positions point at (0, 0)) with ``valid`` [B, T]."""

    tokens: np.ndarray
    positions: np.ndarray
    key_end: np.ndarray
    pred: np.ndarray
    row: np.ndarray
    col: np.ndarray
    valid: np.ndarray


def pack_forest(forest: Forest, row_len: int, num_rows: int, seq_len: int, pad_id: int = 0,
                row_base: int = 0) -> PackedRows:
    """Every tree of ``forest`` laid out (``layout_tree``) and first-fit into ``num_rows`` rows of
    ``row_len``; gather map over [B, ``seq_len``]. ``row_base`` is added to the map's rows (the
    rows this process's block starts at in a batch assembled over processes)."""
    trees, owner = forest.trees(), forest.owners()
    laid = [layout_tree(forest, m, owner) for m in trees]
    where, offset, used = first_fit(np.asarray([len(x.tokens) for x in laid]), row_len)
    if used > num_rows:
        raise ValueError(f"the trees need {used} packed rows, more than the {num_rows} given")
    b = len(forest.length)
    out = PackedRows(np.full((num_rows, row_len), pad_id, np.int32), np.zeros((num_rows, row_len), np.int32),
                     np.zeros((num_rows, row_len), np.int32), np.tile(np.arange(row_len, dtype=np.int32),
                                                                     (num_rows, 1)),
                     np.zeros((b, seq_len), np.int32), np.zeros((b, seq_len), np.int32), np.zeros((b, seq_len), bool))
    for tree, r, o in zip(laid, where, offset):
        cols = slice(o, o + len(tree.tokens))
        out.tokens[r, cols], out.positions[r, cols] = tree.tokens, tree.positions
        out.key_end[r, cols], out.pred[r, cols] = tree.key_end + o, tree.pred + o
        for i, c in tree.cols.items():
            if len(c) > seq_len:
                raise ValueError(f"trajectory {i} has {len(c)} tokens, more than the gather map's {seq_len}")
            out.row[i, :len(c)], out.col[i, :len(c)], out.valid[i, :len(c)] = r + row_base, c + o, True
    return out
