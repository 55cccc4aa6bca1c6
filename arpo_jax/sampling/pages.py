"""Host-side page allocator of the paged KV cache (pure numpy; no device calls).

Shapes: S slots, P pages in the pool, M = max pages per slot (ceil(capacity / page_size)).

A slot's context lives in the pages ``table[s, :count[s]]``: token position p of slot s is
row ``p % page_size`` of page ``table[s, p // page_size]``. Pages carry reference counts:
``fork`` shares the parent's pages with the child (count + 1 each), and a page is written
only by a slot that owns it alone — every operation that writes positions [a, b) of a
slot first calls ``grow``, which appends fresh pages and replaces each shared page in the
range by a private copy (copy-on-write; the host returns (src, dst) page pairs for the
device to copy). ``truncate`` (rewind, trimming) and ``release`` drop references; a page
whose count reaches 0 returns to the free list.
"""

from __future__ import annotations

import numpy as np


class OutOfKVPages(RuntimeError):
    """An operation needs more KV-cache pages than are free (raise ``num_pages``)."""


def pages_for(num_tokens: int, page_size: int) -> int:
    """Pages that hold ``num_tokens`` tokens (ceil division)."""
    return -(-num_tokens // page_size)


def pad_copies(num_pages: int, copies: list[tuple[int, int]], size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) page ids [n] padded to ``size`` or the next power of two; padding copies
    page 0 onto page ``num_pages`` (out of range: the device drops it)."""
    n = size
    while n < len(copies):
        n *= 2
    src, dst = np.zeros(n, np.int32), np.full(n, num_pages, np.int32)
    if copies:
        src[: len(copies)], dst[: len(copies)] = np.asarray(copies, np.int32).T
    return src, dst


class PageAllocator:
    """Reference-counted pages and one page table per slot.

    table: [S, M] int32 page ids (entries >= count[s] are 0: never read past a slot's
    length, never written); count: [S] pages held; refcount: [P]; free pages on a stack.
    """

    def __init__(self, num_pages: int, page_size: int, num_slots: int, max_pages: int):
        if min(num_pages, page_size, num_slots, max_pages) < 1:
            raise ValueError("num_pages, page_size, num_slots and max_pages must be >= 1")
        self.num_pages, self.page_size, self.max_pages = num_pages, page_size, max_pages
        self.table = np.zeros((num_slots, max_pages), np.int32)
        self.count = np.zeros(num_slots, np.int32)
        self.refcount = np.zeros(num_pages, np.int32)
        self._free = list(range(num_pages - 1, -1, -1))  # stack: page 0 is handed out first
        self.peak_used = 0

    # ------------------------------------------------------------------ queries
    def free(self) -> int:
        """Pages not referenced by any slot."""
        return len(self._free)

    def used(self) -> int:
        return self.num_pages - len(self._free)

    def reclaimable(self, slot: int) -> int:
        """Pages that releasing ``slot`` would return to the free list (held by it alone)."""
        return int(np.count_nonzero(self.refcount[self.table[slot, :self.count[slot]]] == 1))

    def needed(self, slot: int, start: int, end: int) -> int:
        """Pages ``grow(slot, start, end)`` would take from the free list: new pages past the
        slot's last one plus a copy of every shared page covering positions [start, end)."""
        if end <= start:
            return 0
        first, last = start // self.page_size, pages_for(end, self.page_size)
        held = self.table[slot, first:min(last, self.count[slot])]
        return max(0, last - int(self.count[slot])) + int(np.count_nonzero(self.refcount[held] > 1))

    # ---------------------------------------------------------------- mutations
    def _alloc(self) -> int:
        page = self._free.pop()
        self.refcount[page] = 1
        self.peak_used = max(self.peak_used, self.used())
        return page

    def _drop(self, page: int) -> None:
        self.refcount[page] -= 1
        if self.refcount[page] == 0:
            self._free.append(int(page))

    def check(self, needed: int, what: str) -> None:
        """Raises ``OutOfKVPages`` when ``needed`` pages exceed the free ones."""
        if needed > self.free():
            raise OutOfKVPages(f"{what} needs {needed} KV pages but {self.free()} of {self.num_pages} are free "
                               f"(raise num_pages / rollout kv_pages, or run fewer slots at once)")

    def grow(self, slot: int, start: int, end: int) -> list[tuple[int, int]]:
        """Makes positions [start, end) of ``slot`` writable: appends fresh pages up to
        ``end`` and copies every shared page in the range. Returns the (src, dst) page copies
        the device must make before writing. Check ``needed`` first (this raises midway)."""
        copies: list[tuple[int, int]] = []
        if end <= start:
            return copies
        last = pages_for(end, self.page_size)
        if last > self.max_pages:
            raise ValueError(f"slot {slot}: position {end - 1} is beyond the capacity of {self.max_pages} pages")
        self.check(self.needed(slot, start, end), f"slot {slot}")
        for i in range(start // self.page_size, min(last, int(self.count[slot]))):
            page = int(self.table[slot, i])
            if self.refcount[page] > 1:  # copy-on-write
                new = self._alloc()
                self._drop(page)
                self.table[slot, i] = new
                copies.append((page, new))
        for i in range(int(self.count[slot]), last):
            self.table[slot, i] = self._alloc()
        self.count[slot] = max(int(self.count[slot]), last)
        return copies

    def truncate(self, slot: int, length: int) -> None:
        """Keeps the pages holding positions [0, length) of ``slot``; drops the rest."""
        keep = pages_for(length, self.page_size)
        for i in range(keep, int(self.count[slot])):
            self._drop(int(self.table[slot, i]))
            self.table[slot, i] = 0
        self.count[slot] = min(int(self.count[slot]), keep)

    def release(self, slot: int) -> None:
        """Drops every page of ``slot``."""
        self.truncate(slot, 0)

    def fork(self, parent: int, child: int, length: int) -> list[tuple[int, int]]:
        """Child := the parent's first ``length`` positions: full pages shared, the last
        partial page copied (the child writes there next). Returns the page copies."""
        n = pages_for(length, self.page_size)
        partial = length % self.page_size != 0
        self.check(int(partial) - self.reclaimable(child), f"fork of slot {parent}")
        self.release(child)
        self.table[child, :n] = self.table[parent, :n]
        self.refcount[self.table[child, :n]] += 1
        self.count[child] = n
        return self.grow(child, length, length + 1) if partial else []
