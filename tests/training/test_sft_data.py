"""SFT data: the three row formats, loss masks (tool results masked), errors, the loader."""

import json

import numpy as np
import pytest

from arpo_jax.data.records import DataError
from arpo_jax.data.sft_data import SFTExample, encode_records, load_sft_examples, parse_row, read_sft_file
from arpo_jax.data.sft_loader import LoaderPosition, SFTLoader, bucket_lengths

from .sft_tiny import SYSTEM, build_tokenizer, trace_texts, write_sharegpt


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def _trained_text(tok, ex):
    return tok.decode([t for t, m in zip(ex.tokens, ex.loss_mask) if m])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sharegpt_trains_on_model_text_only(tok, tmp_path):
    path = write_sharegpt(tmp_path / "d.jsonl", 3)
    examples, counts = load_sft_examples([path], tok, max_len=512)
    assert counts["examples"] == 3 and counts["truncated"] == 0
    q, resp, ans = trace_texts(3)[0]
    ex = examples[0]
    text = tok.decode(ex.tokens)
    assert text.startswith("<|im_start|>system\n" + SYSTEM) and text.endswith(resp + "<|im_end|>")
    trained = _trained_text(tok, ex)
    assert trained == resp.split(" <result>")[0] + "<answer>" + resp.split("<answer>")[1] + "<|im_end|>"
    assert "<result>" not in trained and q not in trained


def test_trace_format_matches_sharegpt_encoding(tok, tmp_path):
    q, resp, _ = trace_texts(1)[0]
    head, rest = resp.split(" <result>")
    result, tail = rest.split("</result>")
    trace = {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
             "response_segments": [{"text": head, "kind": "model"},
                                   {"text": " <result>" + result + "</result>", "kind": "tool"},
                                   {"text": tail, "kind": "model"}]}
    a, _ = load_sft_examples([_write(tmp_path / "t.jsonl", [trace])], tok, max_len=512)
    b, _ = load_sft_examples([write_sharegpt(tmp_path / "s.jsonl", 1)], tok, max_len=512)
    np.testing.assert_array_equal(a[0].tokens, b[0].tokens)
    np.testing.assert_array_equal(a[0].loss_mask, b[0].loss_mask)
    no_eos, _ = load_sft_examples([_write(tmp_path / "n.jsonl", [dict(trace, eos=False)])], tok, max_len=512)
    assert not _trained_text(tok, no_eos[0]).endswith("<|im_end|>")


def test_multi_turn_messages_mask_tool_role_and_prompts(tok, tmp_path):
    msgs = [{"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "<python>print(2+3)</python>"},
            {"role": "tool", "content": "5"},
            {"role": "assistant", "content": "<answer>\\boxed{5}</answer>"},
            {"role": "user", "content": "thanks"}]
    ex = load_sft_examples([_write(tmp_path / "m.jsonl", [{"messages": msgs}])], tok, max_len=512)[0][0]
    assert tok.decode(ex.tokens) == tok.apply_chat_template(msgs, tokenize=False)
    assert _trained_text(tok, ex) == "<python>print(2+3)</python><|im_end|><answer>\\boxed{5}</answer><|im_end|>"


def test_bad_rows_name_file_row_and_field(tok, tmp_path):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    bad = {"conversations": [{"from": "robot", "value": "hi"}]}
    path = _write(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'conversations\[0\]\.from': unknown speaker 'robot'"):
        read_sft_file(path)
    assert len(read_sft_file(path, lenient=True)) == 1
    (tmp_path / "j.jsonl").write_text('{"messages": [}\n')
    with pytest.raises(DataError, match=r"j\.jsonl:0: field '<json>'"):
        read_sft_file(tmp_path / "j.jsonl")
    with pytest.raises(DataError, match="no assistant"):
        parse_row({"messages": [{"role": "user", "content": "x"}]}, "f.jsonl", 3)
    with pytest.raises(DataError, match=r"f\.jsonl:4: field 'response_segments\[0\]\.kind'"):
        parse_row({"prompt": [{"role": "user", "content": "x"}],
                   "response_segments": [{"text": "a", "kind": "env"}]}, "f.jsonl", 4)


def test_long_examples_are_truncated_or_dropped(tok, tmp_path):
    recs = read_sft_file(write_sharegpt(tmp_path / "d.jsonl", 4))
    ex, counts = encode_records(recs, tok, max_len=40)
    assert counts["truncated"] == 4 and all(len(e.tokens) == 40 for e in ex)
    ex, counts = encode_records(recs, tok, max_len=40, truncate=False)
    assert ex == [] and counts["dropped_long"] == 4
    ex, counts = encode_records(recs, tok, max_len=12)  # nothing trainable left inside the prompt
    assert counts["dropped_empty"] == 4


def _fake(n, seed=0):
    rng = np.random.default_rng(seed)
    return [SFTExample(f"e{i}", np.full(int(k), i, np.int32), np.ones(int(k), np.int8))
            for i, k in enumerate(rng.integers(5, 100, n))]


def test_loader_is_deterministic_and_resumes_across_epoch_boundaries():
    examples = _fake(22)
    kw = dict(batch_size=4, max_len=128, seed=7, bucket_window=2, min_bucket=16)
    a = SFTLoader(examples, **kw)
    assert a.batches_per_epoch == 5
    seq = [a.next_batch() for _ in range(12)]
    assert [b.position for b in seq[4:6]] == [LoaderPosition(0, 4), LoaderPosition(1, 0)]
    for epoch in (0, 1):  # each epoch draws distinct examples; 22 // 4 batches, 2 left out
        ids = [i for b in seq[5 * epoch:5 * epoch + 5] for i in b.ids]
        assert len(set(ids)) == 20
    assert [b.ids for b in seq[:5]] != [b.ids for b in seq[5:10]]
    for b in seq:  # padded to a bucket, every row fits
        assert b.tokens.shape[1] in bucket_lengths(128, 16)
        assert b.attention_mask.sum(1).max() <= b.tokens.shape[1] < 2 * max(b.attention_mask.sum(1).max(), 8)
    for stop in (5, 7):  # resume at the epoch boundary and mid-epoch
        b = SFTLoader(examples, **kw)
        b.set_position(seq[stop - 1].position)
        b.next_batch()
        if stop == 5:
            assert b.position == LoaderPosition(1, 0)
        b.set_position(b.position.to_dict())
        rest = [b.next_batch() for _ in range(12 - stop)]
        for x, y in zip(rest, seq[stop:]):
            assert x.ids == y.ids and x.position == y.position
            np.testing.assert_array_equal(x.tokens, y.tokens)
    b = SFTLoader(examples, **kw)
    b.set_position({"epoch": 0, "index": 5})  # an end-of-epoch position rolls over
    assert b.position == LoaderPosition(1, 0)
    with pytest.raises(ValueError, match="outside the data"):
        b.set_position(LoaderPosition(0, 6))
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        SFTLoader(examples[:3], batch_size=4, max_len=128)


def test_length_bucketing_reduces_padding_and_eval_covers_everything():
    examples = _fake(64, seed=1)
    bucketed = SFTLoader(examples, batch_size=8, max_len=128, bucket_window=8, min_bucket=16)
    plain = SFTLoader(examples, batch_size=8, max_len=128, bucket_window=1, min_bucket=16)
    def padding(loader):
        return sum(int(b.tokens.size - b.attention_mask.sum()) for b in (loader.next_batch() for _ in range(8)))

    assert padding(bucketed) < 0.6 * padding(plain)
    rows = list(bucketed.eval_batches(10))
    assert len(rows) == 7 and rows[-1]["attention_mask"][4:].sum() == 0
    assert sum(int(r["attention_mask"].sum()) for r in rows) == sum(len(e.tokens) for e in examples)


def test_packed_loader_places_every_example_whole_once_and_resumes():
    """data.pack: rows of max_len hold whole examples (first fit), each example once per epoch
    (but those of the incomplete last batch), random order, one shape, and exact resume."""
    examples = _fake(300, seed=2)
    kw = dict(batch_size=4, max_len=128, seed=3, pack=True, pack_window=8)
    a = SFTLoader(examples, **kw)
    n = a.batches_per_epoch
    seq = [a.next_batch() for _ in range(n + 3)]
    assert seq[n].position == LoaderPosition(1, 0)
    ids = [i for b in seq[:n] for i in b.ids]
    assert len(ids) == len(set(ids)) >= len(examples) - 4 * 3  # at most a few rows' worth left out
    real = sum(int(b.attention_mask.sum()) for b in seq[:n])
    assert real > 0.9 * seq[0].tokens.size * n  # first fit leaves little padding
    for b in seq:
        assert b.tokens.shape == (4, 128)
        for row in range(4):  # key_end marks whole examples; positions restart at each one
            r_ids = [int(t) for t in b.tokens[row][b.attention_mask[row] > 0]]
            starts = np.flatnonzero(b.positions[row] == 0)
            for s in starts[:-1]:
                e = b.key_end[row, s]
                if b.attention_mask[row, s]:
                    assert (b.tokens[row, s:e] == b.tokens[row, s]).all() and b.loss_mask[row, s] == 0
            assert len(r_ids) <= 128
    assert [b.ids for b in seq[:3]] != [b.ids for b in seq[n:n + 3]]  # another order in epoch 1
    b = SFTLoader(examples, **kw)
    b.set_position(seq[n - 2].position.to_dict())
    for x, y in zip([b.next_batch() for _ in range(4)], seq[n - 2:n + 2]):
        assert x.ids == y.ids and x.position == y.position
        np.testing.assert_array_equal(x.key_end, y.key_end)
