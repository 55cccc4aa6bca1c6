"""The paged KV cache's host allocator (reference counts, copy-on-write, release) and the
sampler's page accounting: forks share pages, memory runs out cleanly, ``allowed`` freezes slots."""

import numpy as np
import pytest

from arpo_jax.models import load_hf
from arpo_jax.sampling import FREE, RUNNING, OutOfKVPages, PageAllocator, Sampler, SamplingConfig
from tests.models.hf_tiny import save_tiny

Z = 4  # page size of the allocator tests


def _check_invariants(a: PageAllocator):
    """Reference counts equal the table entries that name each page; free = count 0."""
    refs = np.zeros(a.num_pages, np.int64)
    for s in range(a.table.shape[0]):
        np.add.at(refs, a.table[s, : a.count[s]], 1)
    np.testing.assert_array_equal(a.refcount, refs)
    assert a.free() == int(np.count_nonzero(refs == 0))


def test_fork_shares_full_pages_and_copies_the_partial_one():
    a = PageAllocator(num_pages=16, page_size=Z, num_slots=4, max_pages=8)
    assert a.grow(0, 0, 10) == [] and a.count[0] == 3 and a.free() == 13  # 10 tokens: 3 pages
    copies = a.fork(0, 1, 10)
    assert a.table[1, :2].tolist() == a.table[0, :2].tolist()  # full pages shared
    assert copies == [(int(a.table[0, 2]), int(a.table[1, 2]))]  # the partial page copied
    assert a.refcount[a.table[0, :3]].tolist() == [2, 2, 1] and a.free() == 12
    assert a.fork(0, 2, 8) == [] and a.free() == 12  # at a page boundary nothing is copied
    _check_invariants(a)


def test_write_into_a_shared_page_copies_it_first():
    a = PageAllocator(num_pages=16, page_size=Z, num_slots=3, max_pages=8)
    a.grow(0, 0, 12)
    a.fork(0, 1, 12)  # 3 full pages, all shared
    a.truncate(1, 6)  # rewind into the middle of the shared second page
    assert a.needed(1, 6, 9) == 2  # a copy of page 1 + one new page
    shared = int(a.table[1, 1])
    copies = a.grow(1, 6, 9)
    assert copies == [(shared, int(a.table[1, 1]))] and a.table[1, 1] != shared
    assert a.refcount[shared] == 1 and a.table[1, 0] == a.table[0, 0]  # page 0 still shared
    _check_invariants(a)


def test_release_returns_pages_and_exhaustion_raises_cleanly():
    a = PageAllocator(num_pages=6, page_size=Z, num_slots=3, max_pages=4)
    a.grow(0, 0, 13)  # 4 pages
    with pytest.raises(OutOfKVPages, match=r"needs 3 KV pages but 2 of 6 are free \(raise num_pages"):
        a.grow(1, 0, 9)
    assert a.free() == 2 and a.count[1] == 0  # nothing taken
    with pytest.raises(ValueError, match="beyond the capacity"):
        a.grow(2, 0, 17)
    a.fork(0, 1, 13)
    a.release(0)
    assert a.free() == 2  # the child still holds the shared pages
    a.release(1)
    assert a.free() == 6
    _check_invariants(a)


def test_random_operations_keep_counts_exact():
    rng = np.random.default_rng(0)
    a = PageAllocator(num_pages=40, page_size=Z, num_slots=6, max_pages=8)
    length = np.zeros(6, np.int64)
    for _ in range(300):
        s, op = int(rng.integers(6)), rng.integers(4)
        if op == 0:  # write some tokens
            n = int(rng.integers(1, 9))
            need = a.needed(s, length[s], length[s] + n)
            if length[s] + n <= 32 and need <= a.free():
                before = a.free()
                a.grow(s, length[s], length[s] + n)
                assert before - a.free() == need and a.needed(s, length[s], length[s] + n) == 0
                length[s] += n
        elif op == 1 and length[s]:  # fork into another slot
            c = int((s + 1 + rng.integers(5)) % 6)
            if a.free() >= 1:
                a.fork(s, c, int(length[s]))
                length[c] = length[s]
        elif op == 2:  # rewind
            length[s] = int(rng.integers(0, length[s] + 1))
            a.truncate(s, int(length[s]))
        else:
            a.release(s)
            length[s] = 0
        _check_invariants(a)
        for slot in range(6):  # every page a slot writes next is its own after grow
            assert a.count[slot] >= -(-length[slot] // Z)
    for s in range(6):
        a.release(s)
    assert a.free() == a.num_pages


# ------------------------------------------------------------------------- the sampler
CFG = SamplingConfig(max_new_tokens=32, chunk_size=8, prefill_chunk=32, min_window=16)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_pages")
    save_tiny("qwen3", path)
    return load_hf(path)[0]


def test_forks_share_the_prompt_pages(model):
    s = Sampler(model, CFG.replace(kv_layout="paged"), num_slots=9, capacity=192, seed=0)
    prompt = np.random.default_rng(0).integers(0, 160, 150).tolist()
    s.insert([0], [prompt], budgets=[16])
    prompt_pages = -(-149 // 16)  # prompt[:-1] is in the cache
    assert s.num_pages - s.pages_free() == prompt_pages == 10
    assert s.pages_to_fork(0, 8) == 8
    s.fork(0, list(range(1, 9)), keys=list(range(8)))
    assert s.num_pages - s.pages_free() == prompt_pages + 8  # one private partial page per child
    np.testing.assert_array_equal(s.next_logits([3])[0], s.next_logits([0])[0])
    s.decode_chunk()  # 8 tokens each: positions 149..156 stay in the 10th page
    assert s.num_pages - s.pages_free() == prompt_pages + 8
    s.decode_chunk()
    assert s.num_pages - s.pages_free() == prompt_pages + 8 + 9  # each slot crossed into an 11th page
    s.release(list(range(9)))
    assert s.pages_free() == s.num_pages


def test_out_of_pages_is_clean_and_allowed_decodes_a_subset(model):
    s = Sampler(model, CFG.replace(kv_layout="paged", page_size=8, num_pages=8), num_slots=4, capacity=64)
    rng = np.random.default_rng(1)
    s.insert([0, 1], [rng.integers(0, 160, 20).tolist() for _ in range(2)], budgets=[24, 24])  # 3 pages each
    assert s.pages_needed([0, 1], 8) == 2 and s.pages_free() == 2  # 19 tokens + 8 = 27: 4 pages each
    with pytest.raises(OutOfKVPages, match="insert needs 3 KV pages but 2 of 8 are free"):
        s.insert([2], [rng.integers(0, 160, 20).tolist()])
    assert s.status[2] == FREE and s.pages_free() == 2
    s.decode_chunk()  # needs exactly the 2 free pages
    assert s.pages_free() == 0 and s.pages_needed([0, 1], 8) == 2
    with pytest.raises(OutOfKVPages, match=r"decode_chunk needs 2 KV pages but 0 of 8 are free"):
        s.decode_chunk()
    lengths = s.lengths.copy()
    s.release([1])
    r = s.decode_chunk(allowed=np.array([True, False, False, False]))
    assert r.num_new[0] == 8 and s.lengths[0] == lengths[0] + 8 and s.status[0] == RUNNING
    s.release([0])
    assert s.pages_free() == s.num_pages


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_allowed_freezes_slots_exactly(model, layout):
    """A slot masked out keeps length, key, budget and status; it later produces the tokens it
    would have produced (its twin, same key, decoded meanwhile). No recompilation either."""
    s = Sampler(model, CFG.replace(kv_layout=layout, min_window=64), num_slots=4, capacity=96, seed=0)
    prompt = np.random.default_rng(2).integers(0, 160, 21).tolist()
    s.insert([0, 1], [prompt, prompt], budgets=[16, 16], keys=[7, 7])
    before = s.compile_counts()["decode_chunk"]
    r = s.decode_chunk(allowed=[True, False, False, False])
    assert r.num_new.tolist() == [8, 0, 0, 0] and s.lengths[1] == 20 and s.budget[1] == 16
    assert s.status[1] == RUNNING and (r.tokens[1] == -1).all()
    r1 = s.decode_chunk(allowed=[False, True, False, False])
    np.testing.assert_array_equal(r1.tokens[1], r.tokens[0])  # same key, same state → same tokens
    np.testing.assert_allclose(r1.logprobs[1], r.logprobs[0], atol=1e-6)
    s.decode_chunk()
    assert s.lengths[0] == s.lengths[1] == 36
    assert s.compile_counts()["decode_chunk"] == before + 1  # one window: one variant, mask or not
    with pytest.raises(ValueError, match="allowed must be a bool mask"):
        s.decode_chunk(allowed=[True])


def test_contiguous_pages_are_slot_rows(model):
    s = Sampler(model, CFG, num_slots=3, capacity=64)
    assert (s.page_size, s.num_pages, s.pages_free()) == (64, 3, 3)
    s.insert([0], [[1, 2, 3]])
    assert s.pages_free() == 2 and s.pages_needed([0, 1], 5) == 1 and s.pages_to_fork(0, 2) == 2
