"""Deterministic, resumable SFT batches: length bucketing, or packing.

The order of epoch e is a pure function of (seed, e). Two layouts:

* bucketed (default): examples are shuffled, sorted by length inside windows of
  ``bucket_window`` batches (so a batch holds examples of similar length), cut into batches
  (the incomplete last batch is dropped) and the batches are shuffled. Each batch is
  right-padded to the smallest bucket length ``min_bucket * 2**k`` (capped at ``max_len``)
  that fits, so only a few shapes are ever compiled. When lengths follow the kind of example
  (templated data), sorted batches hold one kind each and the gradient swings between kinds.
* packed (``pack=True``): examples are shuffled and packed whole into rows of ``max_len``
  tokens (first fit among the last ``pack_window`` rows opened); a batch is ``batch_size``
  rows, so every batch has one shape, almost no padding and examples in random order. Each
  token carries its position inside its example and ``key_end`` (the end of its example), the
  interval mask of ``models.attention``: an example attends only to itself, and the first
  token of an example is never a training target. The number of rows, hence of batches,
  varies slightly between epochs (``batches_in``).

``position`` = (epoch, index of the next batch in that epoch). After the last batch of an
epoch it is (epoch + 1, 0): a run checkpointed there resumes in the next epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from arpo_jax.data.sft_data import SFTExample


@dataclasses.dataclass(frozen=True)
class LoaderPosition:
    """Where the next batch comes from."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderPosition":
        return cls(int(d["epoch"]), int(d["index"]))


@dataclasses.dataclass(frozen=True)
class SFTBatch:
    """One batch of right-padded rows. tokens int32 [B, T]; attention_mask int32 [B, T]
    (1 = real token); loss_mask float32 [B, T] (1 = trained token)."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    position: LoaderPosition
    ids: tuple[str, ...] = ()
    positions: np.ndarray | None = None  # packed rows: int32 [B, T] position inside the example
    key_end: np.ndarray | None = None  # packed rows: int32 [B, T] end column of the token's example

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"tokens": self.tokens, "attention_mask": self.attention_mask, "loss_mask": self.loss_mask}
        if self.key_end is not None:
            out.update(positions=self.positions, key_end=self.key_end)
        return out


def bucket_lengths(max_len: int, min_bucket: int) -> list[int]:
    """Padded lengths in use: min_bucket * 2**k below max_len, then max_len (0 → [max_len])."""
    if min_bucket <= 0 or min_bucket >= max_len:
        return [max_len]
    out, b = [], min_bucket
    while b < max_len:
        out.append(b)
        b *= 2
    return out + [max_len]


def collate(examples: Sequence[SFTExample], length: int, pad_id: int, rows: int | None = None) -> dict[str, np.ndarray]:
    """Right-pads examples to ``length``; extra all-padding rows up to ``rows`` (mask 0)."""
    rows = rows or len(examples)
    tokens = np.full((rows, length), pad_id, np.int32)
    attn = np.zeros((rows, length), np.int32)
    loss = np.zeros((rows, length), np.float32)
    for r, ex in enumerate(examples):
        n = min(len(ex.tokens), length)
        tokens[r, :n] = ex.tokens[:n]
        attn[r, :n] = 1
        loss[r, :n] = ex.loss_mask[:n]
    return {"tokens": tokens, "attention_mask": attn, "loss_mask": loss}


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_len: int, window: int) -> list[list[int]]:
    """Example indices of each row: examples in ``order`` go whole into the first of the last
    ``window`` rows opened that has room, else into a new row; rows in the order they opened."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        r = next((r for r in range(max(0, len(rows) - window), len(rows)) if free[r] >= n), None)
        if r is None:
            rows.append([])
            free.append(row_len)
            r = len(rows) - 1
        rows[r].append(int(i))
        free[r] -= n
    return rows


def collate_packed(rows: Sequence[Sequence[SFTExample]], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Rows of whole examples back to back, right-padded to ``length``: tokens, attention_mask
    (1 = real), loss_mask (0 at each example's first token), positions and key_end (a padding
    column is its own example of one token)."""
    b = len(rows)
    tokens = np.full((b, length), pad_id, np.int32)
    attn = np.zeros((b, length), np.int32)
    loss = np.zeros((b, length), np.float32)
    positions = np.zeros((b, length), np.int32)
    key_end = np.tile(np.arange(1, length + 1, dtype=np.int32), (b, 1))
    for r, exs in enumerate(rows):
        start = 0
        for ex in exs:
            end = start + len(ex.tokens)
            tokens[r, start:end] = ex.tokens
            attn[r, start:end] = 1
            loss[r, start:end] = ex.loss_mask
            loss[r, start] = 0.0
            positions[r, start:end] = np.arange(end - start)
            key_end[r, start:end] = end
            start = end
    return {"tokens": tokens, "attention_mask": attn, "loss_mask": loss, "positions": positions, "key_end": key_end}


class SFTLoader:
    """Batches of ``batch_size`` examples, deterministic from (seed, epoch), resumable.

    Args:
      examples: encoded examples (each at most ``max_len`` tokens).
      batch_size: rows per batch (the global batch).
      max_len: longest padded length.
      seed: data-order seed.
      shuffle: shuffle examples and batches each epoch (else file order).
      bucket_window: sort by length within windows of this many batches (<= 1: no sorting).
      min_bucket: smallest padded length (0: always pad to ``max_len``).
      pad_id: token id of padding (never attended or trained).
      pack: pack whole examples into rows of ``max_len`` (``batch_size`` then counts rows).
      pack_window: rows open to first-fit packing at once.
    """

    def __init__(self, examples: Sequence[SFTExample], *, batch_size: int, max_len: int, seed: int = 0,
                 shuffle: bool = True, bucket_window: int = 16, min_bucket: int = 64, pad_id: int = 0,
                 pack: bool = False, pack_window: int = 16):
        if batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")
        if len(examples) < batch_size:
            raise ValueError(f"the data has {len(examples)} usable examples, fewer than train.batch_size={batch_size}")
        too_long = [e.id for e in examples if len(e.tokens) > max_len]
        if too_long:
            raise ValueError(f"example {too_long[0]!r} is longer than max_len={max_len}")
        self.examples = list(examples)
        self.batch_size, self.max_len, self.seed, self.shuffle = batch_size, max_len, seed, shuffle
        self.bucket_window, self.pad_id = bucket_window, pad_id
        self.pack, self.pack_window = pack, max(1, pack_window)
        self.buckets = bucket_lengths(max_len, min_bucket)
        self.lengths = np.asarray([len(e.tokens) for e in self.examples], np.int64)
        self._position = LoaderPosition()
        self._order_epoch, self._order = -1, []
        self.batches_per_epoch = self.batches_in(0)  # packed: epoch 0's count (others differ slightly)
        if self.batches_per_epoch < 1:
            raise ValueError(f"the data packs into fewer than train.batch_size={batch_size} rows of {max_len} tokens")

    def batches_in(self, epoch: int) -> int:
        """Batches of ``epoch`` (the same for every epoch unless packed)."""
        if not self.pack:
            return len(self.examples) // self.batch_size
        return len(self.epoch_batches(epoch))

    # ---------------------------------------------------------------- ordering
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The example indices of every batch of ``epoch``, in order (cached per epoch)."""
        if epoch == self._order_epoch:
            return self._order
        n, b = len(self.examples), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.pack:  # a batch is b rows of packed example indices (rows are already in random order)
            rows = pack_rows(self.lengths, order, self.max_len, self.pack_window)
            self._order_epoch = epoch
            self._order = [rows[i * b:(i + 1) * b] for i in range(len(rows) // b)]
            return self._order
        if self.bucket_window > 1:
            w = self.bucket_window * b
            order = np.concatenate([chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                                    for chunk in np.split(order, range(w, n, w))])
        batches = [order[i * b:(i + 1) * b] for i in range(self.batches_per_epoch)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._order_epoch, self._order = epoch, batches
        return batches

    def pad_length(self, longest: int) -> int:
        return next(x for x in self.buckets if x >= longest)

    def batch_at(self, position: LoaderPosition) -> SFTBatch:
        """The batch at ``position`` (does not move the loader)."""
        idx = self.epoch_batches(position.epoch)[position.index]
        if self.pack:
            rows = [[self.examples[i] for i in row] for row in idx]
            return SFTBatch(**collate_packed(rows, self.max_len, self.pad_id), position=position,
                            ids=tuple(e.id for row in rows for e in row))
        exs = [self.examples[i] for i in idx]
        arrays = collate(exs, self.pad_length(int(self.lengths[idx].max())), self.pad_id)
        return SFTBatch(**arrays, position=position, ids=tuple(e.id for e in exs))

    # ---------------------------------------------------------------- position
    @property
    def position(self) -> LoaderPosition:
        """Position of the next batch."""
        return self._position

    def set_position(self, position: LoaderPosition | dict) -> None:
        """Moves to ``position`` (e.g. from a checkpoint); an end-of-epoch index rolls over."""
        if isinstance(position, dict):
            position = LoaderPosition.from_dict(position)
        if position.epoch < 0 or not 0 <= position.index <= self.batches_in(position.epoch):
            raise ValueError(f"data position {position} is outside the data "
                             f"({self.batches_in(max(position.epoch, 0))} batches in that epoch; was the data or "
                             "batch size changed?)")
        if position.index == self.batches_in(position.epoch):
            position = LoaderPosition(position.epoch + 1, 0)
        self._position = position

    def next_batch(self) -> SFTBatch:
        """The batch at ``position``; then advances (to the next epoch after the last batch)."""
        batch = self.batch_at(self._position)
        self.set_position(LoaderPosition(self._position.epoch, self._position.index + 1))
        return batch

    def epoch_float(self) -> float:
        """Progress in epochs of the next batch, e.g. 1.25."""
        return self._position.epoch + self._position.index / self.batches_in(self._position.epoch)

    def eval_batches(self, batch_size: int):
        """Every example once, in order; the last batch is filled with padding rows."""
        for start in range(0, len(self.examples), batch_size):
            exs = self.examples[start:start + batch_size]
            longest = max(len(e.tokens) for e in exs)
            yield collate(exs, self.pad_length(longest), self.pad_id, rows=batch_size)
