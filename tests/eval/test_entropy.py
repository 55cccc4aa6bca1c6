"""Entropy around tool results on hand-built dump records, against a loop reference."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from arpo_jax.eval.entropy import EntropyAnalysis, analyze_entropy, iter_dump_records, ReadStats


def make_record(segments, uid=0, tools=None):
    """segments: list of ("m", [entropies]) / ("o", length) / ("c", [entropies]) (a call's tokens).

    Builds mask, entropies, obs_spans and tool_calls (call_start at each "c" segment, start/end
    the span of the result that follows it).
    """
    ent, mask, spans, calls = [], [], [], []
    for kind, val in segments:
        if kind == "o":
            spans.append([len(ent), len(ent) + val])
            if calls and "start" not in calls[-1]:
                calls[-1].update(start=len(ent), end=len(ent) + val)
            ent += [0.0] * val
            mask += [0] * val
        else:
            if kind == "c":
                tool = (tools or {}).get(len(calls), "python")
                calls.append({"tool": tool, "body": "x", "status": "ok", "ok": True, "latency_s": 0.1,
                              "call_start": len(ent)})
            ent += list(val)
            mask += [1] * len(val)
    return {"step": 0, "uid": uid, "mask": mask, "entropies": ent, "obs_spans": spans, "tool_calls": calls,
            "num_tool_calls": len(calls)}


def reference(records, w, clip=True):
    """Plain-loop reference for the after-result and around-call curves."""
    after, call = {p: [] for p in range(-w, w + 1)}, {p: [] for p in range(-w, w + 1)}
    for r in records:
        model = [i for i, m in enumerate(r["mask"]) if m]
        midx = {t: j for j, t in enumerate(model)}
        seg_of = {}  # model index -> segment number (segments split at observations)
        seg = 0
        spans = sorted(map(tuple, r["obs_spans"]))
        for t in range(len(r["mask"])):
            if any(s <= t < e for s, e in spans) and (t == 0 or not any(s <= t - 1 < e for s, e in spans)):
                seg += 1
            if t in midx:
                seg_of[midx[t]] = seg
        for i, (s, e) in enumerate(spans):
            anchor = sum(r["mask"][:e])
            for j in range(len(model)):
                rel = j - anchor
                if abs(rel) <= w and (not clip or seg_of[j] in (i, i + 1)):
                    after[rel].append(r["entropies"][model[j]])
        for c in r["tool_calls"]:
            anchor = midx[c["call_start"]]
            for j in range(len(model)):
                rel = j - anchor
                if abs(rel) <= w and (not clip or seg_of[j] == seg_of[anchor]):
                    call[rel].append(r["entropies"][model[j]])
    return after, call


def check(curve, ref):
    for p, m, n, se in zip(curve["positions"], curve["mean"], curve["count"], curve["stderr"]):
        vals = ref[p]
        assert n == len(vals), p
        if vals:
            assert m == pytest.approx(np.mean(vals)), p
        else:
            assert m is None
        if len(vals) > 1:
            assert se == pytest.approx(np.std(vals, ddof=1) / np.sqrt(len(vals))), p
        else:
            assert se is None


def test_hand_built_record():
    rec = make_record([("m", [1.0, 1.0, 1.0]), ("c", [2.0, 2.0]), ("o", 4), ("m", [5.0, 3.0, 1.0]),
                       ("c", [2.0]), ("o", 2), ("m", [7.0, 0.5])])
    res = EntropyAnalysis(window=2).add_all([rec]).result()
    a = res["after_result"]
    assert a["positions"] == [-2, -1, 0, 1, 2]
    # obs 1: -2,-1 = call tokens (2, 2), 0,1,2 = 5, 3, 1; obs 2: -2,-1 = 1, 2 (call), 0,1 = 7, 0.5
    assert a["count"] == [2, 2, 2, 2, 1]
    assert a["mean"] == pytest.approx([1.5, 2.0, 6.0, 1.75, 1.0])
    assert a["anchors"] == 2
    assert res["overall_mean"] == pytest.approx(np.mean([1, 1, 1, 2, 2, 5, 3, 1, 2, 7, 0.5]))
    c = res["around_call"]
    # call 1 at model index 3 (segment 0: indices 0..4), call 2 at model index 8 (segment 1: 5..8)
    assert c["count"] == [2, 2, 2, 1, 0]
    assert c["mean"][2] == pytest.approx(2.0) and c["mean"][4] is None
    assert res["response_start"]["mean"] == pytest.approx([1.0, 1.0, 1.0])
    assert set(res["after_result_by_tool"]) == {"python"}


@pytest.mark.parametrize("clip", [True, False])
def test_random_records_match_reference(clip):
    rng = random.Random(1)
    records = []
    for uid in range(25):
        segs = []
        for _ in range(rng.randint(0, 4)):
            segs.append(("m", [rng.random() * 3 for _ in range(rng.randint(0, 12))]))
            segs.append(("c", [rng.random() for _ in range(rng.randint(1, 4))]))
            segs.append(("o", rng.randint(1, 9)))
        segs.append(("m", [rng.random() * 3 for _ in range(rng.randint(1, 12))]))
        records.append(make_record(segs, uid))
    w = 6
    res = EntropyAnalysis(window=w, clip_segments=clip).add_all(records).result()
    after, call = reference(records, w, clip)
    check(res["after_result"], after)
    check(res["around_call"], call)
    assert res["after_result"]["anchors"] == sum(len(r["obs_spans"]) for r in records)


def test_defensive_reader(tmp_path):
    good = make_record([("m", [1.0, 2.0]), ("c", [1.0]), ("o", 3), ("m", [4.0, 4.0])])
    minimal = {"entropies": [0.5, 0.5, 0.5]}  # no mask, spans or calls
    bad_mask = {"entropies": [1.0, 1.0, 1.0], "mask": [1, 1], "obs_spans": [[1, 99], "junk"], "tool_calls": [None]}
    legacy = dict(good)
    del legacy["obs_spans"]  # spans recovered from the tool calls
    res = EntropyAnalysis(window=3).add_all([legacy]).result()
    assert res["after_result"]["anchors"] == 1 and res["after_result"]["mean"][3] == 4.0
    plain = json.loads(json.dumps(good))
    del plain["tool_calls"][0]["call_start"]  # a training dump: no call positions
    res = EntropyAnalysis(window=3).add_all([plain]).result()
    assert res["around_call"]["anchors"] == 0 and res["after_result"]["anchors"] == 1
    d = tmp_path / "dumps" / "step_1"
    d.mkdir(parents=True)
    (d / "a.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(minimal) + "\n{not json\n")
    (d / "b.jsonl").write_text(json.dumps(bad_mask) + "\n" + json.dumps({"uid": 3}) + "\n[1, 2]\n")
    stats = ReadStats()
    recs = list(iter_dump_records([tmp_path / "dumps"], stats))
    assert len(recs) == 4 and stats.files == 2 and stats.bad_lines == 2
    analysis = EntropyAnalysis(window=3).add_all(recs)
    res = analysis.result()
    assert res["trajectories"] == 3 and res["read"]["bad_records"] == 1
    assert res["model_tokens"] == 5 + 3 + 2  # bad_mask: cut to its 2 mask entries; the mask wins
    with pytest.raises(FileNotFoundError, match="missing"):
        list(iter_dump_records([tmp_path / "missing"]))
    with pytest.raises(ValueError, match="window"):
        EntropyAnalysis(window=0)


def test_analyze_writes_json_and_png(tmp_path):
    recs = [make_record([("m", [2.0] * 5), ("c", [1.0] * 2), ("o", 3), ("m", [3.0, 2.5, 2.0, 1.5])], uid=i,
                        tools={0: "search" if i % 2 else "python"}) for i in range(4)]
    dump = tmp_path / "d.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = analyze_entropy([dump], tmp_path / "out", window=4)
    data = json.loads((tmp_path / "out" / "entropy_around_tools.json").read_text())
    assert data["after_result"]["mean"][4] == pytest.approx(3.0)
    assert data["after_result"]["count"][4] == 4
    assert set(data["after_result_by_tool"]) == {"python", "search"}
    png = tmp_path / "out" / "entropy_around_tools.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert res["files"]["png"] == str(png)
