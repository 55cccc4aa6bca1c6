"""``arpo-jax eval`` end to end on CPU: the scripted bigram agent (tests/rollout/scripted.py),
the real sandboxed Python tool, two eval sets, two seeds; then ``arpo-jax analyze entropy``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from arpo_jax.cli import main
from arpo_jax.config import ConfigError, load_config
from arpo_jax.eval.runner import EvalConfig
from arpo_jax.eval.trajectories import call_starts

scripted = pytest.importorskip("tests.rollout.scripted")

# The bigram agent only looks at the last token: every prompt ends with "Q".
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}Q"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = scripted.build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model, cfg = scripted.build_model(tok)
    from arpo_jax.models import save_hf

    save_hf(model, cfg, root / "ckpt", tokenizer=tok)
    for name, rows in (("gsm8k", [{"question": f"What is 6*7? ({i})", "answer": "x #### 42"} for i in range(3)]),
                       ("toyqa", [{"question": "Which number?", "answer": ["42", "forty-two"]},
                                  {"question": "Another?", "answer": "41"}])):
        (root / name).mkdir()
        (root / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"path": str(root / "ckpt"), "mesh": [1, 1, 1]},
        "data": {"files": [str(root / "gsm8k" / "test.jsonl"), str(root / "toyqa" / "test.jsonl")],
                 "samples": 4, "system_prompt": ""},
        "rollout": {"max_response_tokens": 48, "max_prompt_tokens": 64, "max_tool_calls": 2, "chunk_size": 8},
        "tools": {"protocol": {"tools": ["python"]}, "python": {"timeout_s": 20.0}},
        "seeds": [0, 1],
        "batch_prompts": 4,
        "out_dir": str(root / "out"),
        "entropy_window": 4,
    }
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path, tok


def test_config_errors(setup):
    _, path, _ = setup
    with pytest.raises(ConfigError, match="unknown config key 'data.bogus'"):
        load_config(EvalConfig, path, ["data.bogus=1"])
    with pytest.raises(ConfigError, match="pass_ks"):
        load_config(EvalConfig, path, ["data.pass_ks=[8]"])
    cfg = load_config(EvalConfig, path, ["rollout.policy=arpo"])
    assert cfg.eval_rollout().policy == "trajectory" and cfg.eval_rollout().total_rollouts == 4


def test_example_config_and_run_seeds():
    from arpo_jax.eval.runner import run_seed

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(EvalConfig, repo / "configs" / "eval_example.yaml", ["data.samples=4"])
    assert cfg.data.samples == 4 and cfg.seeds == [0, 1, 2] and cfg.eval_rollout().policy == "trajectory"
    assert run_seed(0, "gsm8k", 0) == run_seed(0, "gsm8k", 0)
    assert len({run_seed(0, "gsm8k", 0), run_seed(1, "gsm8k", 0), run_seed(0, "aime24", 0),
                run_seed(0, "gsm8k", 1)}) == 4


def test_cli_errors_are_one_line(setup, capsys):
    _, path, _ = setup
    assert main(["eval", str(path), "correct_by=bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: correct_by") and "\n" not in err
    assert main(["eval", str(path), "data.sets=[nope]"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_eval_end_to_end(setup, capsys):
    root, path, tok = setup
    assert main(["eval", str(path)]) == 0
    stdout = capsys.readouterr().out
    out = root / "out"
    assert "| gsm8k | 3 | 4 |" in stdout and "| toyqa | 2 | 4 |" in stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["seeds"] == [0, 1] and report["config"]["seeds"] == [0, 1]
    g = report["sets"]["gsm8k"]
    assert set(g["per_seed"]) == {"0", "1"}
    m = g["per_seed"]["0"]
    assert m["samples"] == 12 and set(m["pass@k"]) == {"1", "2", "4"}
    assert 0.0 <= m["pass@1"] <= m["pass@k"]["2"] <= m["pass@k"]["4"] <= 1.0
    assert m["math_equiv"] is not None and report["sets"]["toyqa"]["per_seed"]["0"]["math_equiv"] is None
    assert g["summary"]["pass@k.1"]["n"] == 2
    # the scripted agent answers 42 or 41 (probability 1/2 each once it answers)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * (3 + 2) * 4
    answered = [s for s in samples if s["answer"] is not None]
    assert answered and {s["answer"] for s in answered} <= {"42", "41"}
    for s in answered:
        if s["eval_set"] == "gsm8k":
            assert s["correct"] == (s["answer"] == "42") == s["math_correct"]
    calls = [c for s in samples for c in s["tool_calls"]]
    assert calls and all(c["tool"] == "python" for c in calls)
    assert sum(c["ok"] for c in calls) == len(calls)  # print(6*7) runs in the sandbox
    assert m["tool_calls_per_question"]["python"] > 0 and m["tool_failure_rate"]["python"] == 0.0
    assert (out / "metrics.md").read_text().startswith("seeds: 0, 1")
    # trajectories: dump records with the tool results' spans and the calls' start tokens
    recs = [json.loads(x) for f in sorted((out / "trajectories").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert len(recs) == len(samples) and {r["eval_set"] for r in recs} == {"gsm8k", "toyqa"}
    with_call = [r for r in recs if r["tool_calls"]]
    assert with_call
    for r in with_call:
        for c, (s, e) in zip(r["tool_calls"], r["obs_spans"]):
            assert (c["start"], c["end"]) == (s, e)
            assert c["call_start"] is not None and c["call_start"] < s and r["mask"][c["call_start"]] == 1
        assert "<result>" in r["response"]
    ent = json.loads((out / "entropy_around_tools.json").read_text())
    assert ent["trajectories"] == len(recs) and ent["after_result"]["anchors"] > 0
    assert ent["around_call"]["anchors"] == sum(len(r["tool_calls"]) for r in recs)
    assert (out / "entropy_around_tools.png").stat().st_size > 5000
    # after a result the bigram agent's entropy is ln-entropy of TRANSITIONS["\n</result>"] at position 0
    assert ent["after_result"]["mean"][4] == pytest.approx(scripted.entropy_after("\n</result>"), abs=1e-3)

    # reproducible, and independent of the other sets and seeds of the run
    assert main(["eval", str(path), "seeds=[1]", f"data.files=[{root / 'toyqa' / 'test.jsonl'}]",
                 f"out_dir={root / 'out1'}"]) == 0
    again = [json.loads(x) for x in (root / "out1" / "samples.jsonl").read_text().splitlines()]
    assert again == [s for s in samples if s["eval_set"] == "toyqa" and s["seed"] == 1]

    assert main(["analyze", "entropy", str(out / "trajectories"), "--out", str(root / "ana"), "--window", "4"]) == 0
    again = json.loads((root / "ana" / "entropy_around_tools.json").read_text())
    assert again["after_result"] == ent["after_result"]


def test_call_starts_on_scripted_tokens(setup):
    _, _, tok = setup
    text = "<think>hmm</think><python>print(6*7)</python>"
    ids = tok.encode(text, add_special_tokens=False)
    obs = tok.encode(" <result>\n42\n</result>", add_special_tokens=False)
    ids2 = tok.encode("a<python>print(6*7)</python>", add_special_tokens=False)
    tokens = ids + obs + ids2 + obs
    s1, s2 = len(ids), len(ids) + len(obs) + len(ids2)
    spans = [(s1, s1 + len(obs)), (s2, s2 + len(obs))]
    calls = [{"tool": "python", "start": s, "end": e} for s, e in spans]
    starts = call_starts(tokens, calls, spans, tok, ["python"])
    assert [tok.convert_ids_to_tokens(tokens[i]) for i in starts] == ["<python>", "<python>"]
    assert starts == [3, s1 + len(obs) + 1]
    assert call_starts(tokens, [{"tool": "search", "start": s1}], spans, tok, ["python"]) == [None]
