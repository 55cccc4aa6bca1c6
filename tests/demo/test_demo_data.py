"""The demo's data: synthetic tasks, corpus, tokenizer, SFT traces, prompt files (CPU, fast)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from arpo_jax.apps.demo import tasks as T
from arpo_jax.apps.demo.data import prepare_demo_data, search_config
from arpo_jax.apps.demo.tokenizer import EOS_TOKEN, SPECIAL_TOKENS, TOOL_TAGS, check_tokenizer, eos_ids
from arpo_jax.apps.demo.traces import response_text

NUM = re.compile(r"\d+")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small data folder (the real tools run once, as in the demo)."""
    out = tmp_path_factory.mktemp("demo_data")
    paths = prepare_demo_data(out, seed=3, quick=True, n_train=90, n_heldout=45)
    rows = [json.loads(line) for line in open(paths["sft_traces"], encoding="utf-8")]
    return paths, rows


@pytest.fixture(scope="module")
def tok(demo):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo[0]["tokenizer"])


def _numbers(question: str) -> set[int]:
    return {int(n) for n in NUM.findall(question)}


def test_world_and_tasks_are_deterministic():
    assert T.build_world(5) == T.build_world(5)
    assert T.build_world(5) != T.build_world(6)
    w = T.build_world(5)
    assert T.make_tasks(w, "train", 40, seed=1) == T.make_tasks(w, "train", 40, seed=1)


def test_splits_are_disjoint():
    w = T.build_world(0)
    names = {s: {p.name for p in w.people[s]} for s in T.SPLITS}
    cities = {s: {c.name for c in w.cities[s]} for s in T.SPLITS}
    assert not names["train"] & names["heldout"] and not cities["train"] & cities["heldout"]
    for key in ("a", "b", "k"):
        assert not set(w.operands["train"][key]) & set(w.operands["heldout"][key])
    assert all(p.city in cities[s] for s in T.SPLITS for p in w.people[s])
    train, held = T.make_tasks(w, "train", 300), T.make_tasks(w, "heldout", 100)
    assert not {t.question for t in train} & {t.question for t in held}
    for t in held:
        if t.entity:
            assert t.entity in names["heldout"] | cities["heldout"]
    train_ops = {n for t in train if t.kind == "arith" for n in _numbers(t.question)}
    held_ops = {n for t in held if t.kind == "arith" for n in _numbers(t.question)}
    assert train_ops and held_ops and not train_ops & held_ops
    assert {t.kind for t in held} == set(T.KINDS)


def test_prompt_files_read_by_eval_reader(demo):
    from arpo_jax.data.eval_jsonl import read_eval_jsonl

    paths, _ = demo
    seen = set()
    for split in ("train_prompts", "heldout_prompts"):
        for f in paths[split]:
            ex = read_eval_jsonl(f, system_prompt=T.SYSTEM_PROMPT)
            assert ex and all(e.data_source in T.KINDS and e.meta["kind"] == e.data_source for e in ex)
            assert all(e.messages[0]["content"] == T.SYSTEM_PROMPT and len(e.answers) == 1 for e in ex)
            seen |= {(split, e.question) for e in ex}
    assert not {q for s, q in seen if s == "train_prompts"} & {q for s, q in seen if s == "heldout_prompts"}


def test_traces_are_correct_and_scored_by_rewards(demo):
    from arpo_jax.rewards import RewardConfig, get_reward_fn, validate_format

    _, rows = demo
    styles = {r["style"] for r in rows}
    assert styles == {"tool", "guess", "redundant"}
    for r in rows:
        text = response_text(r)
        assert validate_format(text) == (True, "format is correct"), (r["id"], text)
        kinds = [s["kind"] for s in r["response_segments"]]
        assert kinds[0] == "model" and kinds[-1] == "model"
        for s in r["response_segments"]:
            if s["kind"] == "tool":
                assert s["text"].startswith(" <result>\n") and s["text"].endswith("\n</result>")
            else:
                assert "<result>" not in s["text"]
        for name in ("qa_em", "qa_f1", "math"):
            res = get_reward_fn(name)(text, [r["answer"]], RewardConfig())
            assert res.score == (1.0 if r["correct"] else 0.0), (name, r["id"], text)
        arpo = get_reward_fn("arpo_f1")(text, [r["answer"]], RewardConfig())
        assert arpo.format_ok and arpo.score >= (1.0 if r["correct"] else 0.0)
        if r["correct"]:
            assert f"\\boxed{{{r['answer']}}}" in text
            assert r["answer"] in r["response_segments"][-2]["text"]  # copied from the last result


def test_tokenizer(demo, tok):
    from arpo_jax.sampling.stops import build_stop_tables, token_bytes

    _, rows = demo
    for tag in TOOL_TAGS:
        (i,) = tok(tag, add_special_tokens=False)["input_ids"]
        assert tok.decode([i]) == tag and tag not in tok.all_special_tokens
    assert tok.eos_token == EOS_TOKEN and tok.pad_token_id is not None
    for r in rows[:20]:
        assert check_tokenizer(tok, T.SYSTEM_PROMPT + r["prompt"][-1]["content"] + response_text(r)) == []
    tb = token_bytes(tok)
    assert len(tb) == len(tok) and tb[tok.convert_tokens_to_ids("</python>")] == b"</python>"
    assert build_stop_tables(("</python>", "</search>"), tb, len(tok)) is not None
    assert set(eos_ids(tok)) == {tok.convert_tokens_to_ids(t) for t in (SPECIAL_TOKENS[0], EOS_TOKEN)}
    # a name is the same tokens after a space, after "{" and right after a tag: copying is exact
    name = rows[0]["prompt"][-1]["content"].split()[-2]
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids(f" {name}")[1:] == ids(f"{{{name}")[1:] == ids(f"<search>{name}")[1:]


def test_fixed_shapes(demo, tok):
    """Every name is one token per syllable, every number of a kind has the same digit count,
    so what the agent copies is always at the same distance (see ``arpo_jax.apps.demo.tasks``)."""
    from arpo_jax.apps.demo.data import irregular_names

    paths, rows = demo
    assert irregular_names(tok, T.build_world(3)) == []
    for o in T.syllables()[:40]:
        assert len(tok(" " + o.capitalize() + o, add_special_tokens=False)["input_ids"]) == 3
    lengths: dict[str, set] = {}
    for r in rows:
        if r["style"] == "guess":
            continue
        n = len(tok(r["prompt"][-1]["content"] + response_text(r), add_special_tokens=False)["input_ids"])
        calls = tuple(re.findall(r"<(search|python)>", response_text(r)))
        lengths.setdefault((r["kind"], r["prompt"][-1]["content"][:4], calls), set()).add(n)
    assert lengths and all(len(v) == 1 for v in lengths.values()), {k: v for k, v in lengths.items() if len(v) > 1}


def test_chat_template(tok):
    msgs = T.prompt_messages("What is 2*3?")
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{T.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 2*3?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True) == text  # default system
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids) == text


def test_sft_encoding_masks_tool_results(demo, tok):
    from arpo_jax.data.sft_data import load_sft_examples

    paths, rows = demo
    examples, counts = load_sft_examples([paths["sft_traces"]], tok, max_len=512)
    assert counts["examples"] == len(rows) and counts["truncated"] == 0
    for ex, r in zip(examples[:30], rows[:30]):
        trained = tok.decode(ex.tokens[ex.loss_mask == 1])
        assert trained.endswith(EOS_TOKEN) and "<result>" not in trained and "Page 1:" not in trained
        assert trained.replace(EOS_TOKEN, "") == "".join(
            s["text"] for s in r["response_segments"] if s["kind"] == "model")


def test_corpus_is_searchable(demo):
    from arpo_jax.tools import SearchTool

    paths, _ = demo
    tool = SearchTool(search_config(paths))
    held = []
    for f in paths["heldout_prompts"]:
        held += [json.loads(line) for line in open(f, encoding="utf-8")]
    world = T.build_world(3)
    gold = {p.name: p for s in T.SPLITS for p in world.people[s]}
    checked = 0
    for row in held:
        if row["kind"] == "arith":
            continue
        entity = next(n for n in gold if re.search(rf"\b{re.escape(n)}\b", row["question"]))
        first = tool.run(entity).content.splitlines()[0]
        assert first.startswith(f"Page 1: {entity}: "), (entity, first)
        if row["kind"] == "fact":
            assert row["answer"][0] in first
        checked += 1
    assert checked > 10


def test_tokenizer_reloads_identically_beside_a_qwen2_config(demo, tok, tmp_path):
    """transformers 5 rebuilds a Qwen2Tokenizer for a qwen2 checkpoint: same ids required."""
    import shutil

    from transformers import AutoTokenizer

    paths, rows = demo
    shutil.copytree(paths["tokenizer"], tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tok), "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}))
    other = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    for r in rows[:40]:
        for text in [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)] + [
                s["text"] for s in r["response_segments"]]:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert other(text, add_special_tokens=False)["input_ids"] == ids
    assert other.convert_tokens_to_ids("</search>") == tok.convert_tokens_to_ids("</search>")


def test_compare_section_replaces_only_its_block(tmp_path):
    from arpo_jax.apps.demo.compare import END, START, write_section

    f = tmp_path / "results.md"
    write_section(f, "## first")
    assert f.read_text() == f"{START}\n## first\n{END}\n"
    f.write_text("# Demo results\n\nmeasured run\n\n" + f.read_text() + "\n## later notes\n")
    write_section(f, "## second\ntable")
    text = f.read_text()
    assert text.startswith("# Demo results\n\nmeasured run\n\n") and text.endswith("## later notes\n")
    assert "## second\ntable" in text and "## first" not in text and text.count(START) == 1


def test_compare_table_reports_mean_std_and_gain_over_sft():
    import numpy as np

    from arpo_jax.apps.demo.compare import render_markdown

    def run(seed, acc, arith):
        return {"seed": seed, "accuracy": acc, "per_set": {"arith": arith, "fact": 0.25},
                "train_tool_calls_per_traj": 1.0 + seed, "train_tool_calls_total": 100 * (seed + 1),
                "branches_per_prompt": 0.5 * seed, "wall_s": 10.0}

    accs = [0.40, 0.50, 0.45]
    summary = {"command": "arpo-jax demo --compare --seeds 3", "total_s": 12.3, "out": "/o", "setting": "S",
               "sft": {"accuracy": 0.1, "per_set": {"arith": 0.0, "fact": 0.2}},
               "labels": {"grpo": "GRPO (trajectory rollouts)", "arpo": "ARPO (entropy branching)"},
               "results": {"grpo": [run(i, 0.2, 0.1 * i) for i in range(3)],
                           "arpo": [run(i, a, 1.0) for i, a in enumerate(accs)]}}
    md = render_markdown(summary)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    arpo = rows["ARPO (entropy branching)"]
    gain = np.asarray(accs) - 0.1
    assert arpo[1] == f"{np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}"
    assert arpo[4] == f"{gain.mean():.3f} ± {gain.std(ddof=1):.3f}"
    assert arpo[2:4] == ["1.00 ± 0.00", "0.25 ± 0.00"] and arpo[6] == "200 ± 100"
    assert rows["GRPO (trajectory rollouts)"][2] == f"0.10 ± {np.std([0, .1, .2], ddof=1):.2f}"
    assert rows["after SFT (one checkpoint)"][1:4] == ["0.100", "0.00", "0.20"]
    assert "total 12 s" in md and "ARPO 0.400, 0.500, 0.450" in md and md.startswith("## GRPO vs ARPO (`--compare`)")


def test_demo_passes_python_tool_settings_to_every_phase():
    """``arpo-jax demo tools.python.sandbox=rlimit`` is the demo's explicit opt-in to the fallback."""
    import subprocess
    import sys

    from arpo_jax.apps.demo.run import SIZES, eval_config, rl_config

    paths = {"train_prompts": ["t.jsonl"], "heldout_prompts": ["h.jsonl"], "search": {}, "corpus": "c.jsonl",
             "index_dir": "i"}
    python = {"sandbox": "rlimit", "python_executable": "/usr/bin/python3"}
    for cfg in (rl_config(paths, "m", Path("o"), SIZES["quick"], "arpo", 0, python),
                eval_config(paths, "m", Path("o"), SIZES["quick"], python)):
        assert cfg["tools"]["python"] == {"timeout_s": 10, **python}
    assert rl_config(paths, "m", Path("o"), SIZES["quick"], "arpo", 0)["tools"]["python"] == {"timeout_s": 10}
    r = subprocess.run([sys.executable, "-m", "arpo_jax.cli", "demo", "train.steps=3"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "only tools.python.* overrides" in r.stderr


def test_a_train_citys_first_syllable_does_not_tell_its_second():
    """Fact answers must be copied whole from the search result: in the train split most first
    syllables start several cities (else SFT learns to complete held-out cities from memory)."""
    import collections

    w = T.build_world(0)
    syllable = re.compile(r"[A-Z]?[^aeiou]+[aeiou]+")
    firsts = collections.Counter(syllable.match(c.name).group(0) for c in w.cities["train"])
    assert sorted(firsts.values())[len(firsts) // 2] >= 5
