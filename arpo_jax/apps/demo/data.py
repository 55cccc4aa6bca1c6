"""``prepare_demo_data``: everything the demo trains and evaluates on, written to one folder.

Layout of ``out_dir``::

    corpus.jsonl                 search corpus ({"id", "title", "text"}), both splits' entities
    bm25/                        its BM25 index (SearchConfig.index_dir)
    tokenizer/                   HF tokenizer directory (AutoTokenizer.from_pretrained)
    sft_traces.jsonl             cold-start SFT traces (train split), trace format
    prompts/train/{arith,fact,multihop}.jsonl     RL training prompts (read_eval_jsonl)
    prompts/heldout/{arith,fact,multihop}.jsonl   held-out evaluation prompts
    manifest.json                the paths, counts and tool settings below

The tools used to build the traces are the ones RL must use: ``DEMO_SEARCH`` settings over
``corpus.jsonl`` (the top page only, to keep traces short) and the default sandboxed Python tool.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from arpo_jax.apps.demo import tasks as T
from arpo_jax.apps.demo.tokenizer import train_tokenizer
from arpo_jax.apps.demo.traces import TraceMix, make_traces, response_text, write_traces

DEMO_SEARCH = {"backend": "bm25", "top_k": 1, "snippet_chars": 200}
"""``SearchConfig`` fields of the demo (plus ``corpus_path`` / ``index_dir`` from the manifest)."""

SIZES = {
    # (SFT traces = train prompts, held-out prompts)
    "default": (5000, 150),
    "quick": (1200, 60),
}


def search_config(paths: dict):
    """The demo's ``SearchConfig`` for a ``prepare_demo_data`` result."""
    from arpo_jax.tools import SearchConfig

    return SearchConfig(corpus_path=paths["corpus"], index_dir=paths["index_dir"], **DEMO_SEARCH)


def tokenizer_texts(world: T.World, rows: list[dict]) -> list[str]:
    """Text the tokenizer is trained on: the system prompt, corpus snippets, questions, traces."""
    texts = [T.SYSTEM_PROMPT] * 20 + ["system user assistant"] * 20  # the chat template's role names
    texts += [" ".join(T.syllables())] * 4  # every syllable a name can have becomes one token
    texts += [f"{d['title']}: {d['text']}" for d in T.corpus_docs(world)]
    texts += [r["prompt"][-1]["content"] for r in rows]
    texts += [response_text(r) for r in rows]
    return texts


def irregular_names(tokenizer, world: T.World) -> list[str]:
    """Names that do not tokenize to one token per syllable after a space (empty when fine):
    the fixed shapes the demo's tasks rely on (see ``arpo_jax.apps.demo.tasks``)."""
    names = [p.name for s in T.SPLITS for p in world.people[s]] + [c.name for s in T.SPLITS for c in world.cities[s]]
    want = {n: sum(1 + 2 for _ in n.split()) for n in names}  # "Ġ" + two syllables per word
    return [n for n in names if len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) != want[n]]


def prepare_demo_data(out_dir: str | Path, seed: int = 0, quick: bool = False, *, n_train: int | None = None,
                      n_heldout: int | None = None, mix: TraceMix | None = None, vocab_size: int = 1024,
                      dispatcher=None, python=None) -> dict:
    """Generates corpus, tokenizer, SFT traces and train/held-out prompt files under ``out_dir``.

    Args:
        out_dir: destination folder (created; existing files are overwritten).
        seed: the one seed of every random choice (same seed -> same files).
        quick: the smaller sizes of ``SIZES["quick"]`` (the test suite's demo).
        n_train / n_heldout: override the sizes (train prompts = SFT traces).
        mix: imperfect-trace shares (``TraceMix()`` by default).
        vocab_size: BPE vocabulary size.
        python: the ``PythonToolConfig`` of the default dispatcher (default: bubblewrap).
        dispatcher: a ``ToolDispatcher`` to run the calls with (default: sandboxed Python and
            the demo's BM25 search); it must be configured as RL's will be.

    Returns:
        A dict: ``corpus``, ``index_dir``, ``tokenizer``, ``sft_traces`` (paths),
        ``train_prompts`` / ``heldout_prompts`` (lists of paths, one per kind), ``search``
        (``SearchConfig`` fields), ``counts``, ``system_prompt``, ``manifest``, ``seconds``.
    """
    from arpo_jax.tools import PythonToolConfig, ToolDispatcher

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    default_train, default_heldout = SIZES["quick" if quick else "default"]
    n_train = default_train if n_train is None else n_train
    n_heldout = default_heldout if n_heldout is None else n_heldout
    world = T.build_world(seed)
    paths: dict = {"corpus": T.write_corpus(world, out / "corpus.jsonl"), "index_dir": str(out / "bm25")}
    train = T.make_tasks(world, "train", n_train, seed)
    heldout = T.make_tasks(world, "heldout", n_heldout, seed)
    paths["train_prompts"] = list(T.write_prompt_files(train, out / "prompts" / "train").values())
    paths["heldout_prompts"] = list(T.write_prompt_files(heldout, out / "prompts" / "heldout").values())
    own = dispatcher is None
    if own:
        dispatcher = ToolDispatcher.from_configs(python or PythonToolConfig(), search_config(paths))
    try:
        rows = make_traces(train, dispatcher, seed=seed, mix=mix)
    finally:
        if own:
            dispatcher.close()
    paths["sft_traces"] = write_traces(rows, out / "sft_traces.jsonl")
    tok = train_tokenizer(tokenizer_texts(world, rows), out / "tokenizer", vocab_size=vocab_size)
    paths["tokenizer"] = str(out / "tokenizer")
    bad = irregular_names(tok, world)
    if bad:
        raise RuntimeError(f"{len(bad)} generated names do not tokenize one token per syllable, e.g. {bad[:3]}")
    styles = Counter(f"{r['kind']}/{r['style']}" for r in rows)
    paths["counts"] = {"train_prompts": len(train), "heldout_prompts": len(heldout), "sft_traces": len(rows),
                       "corpus_docs": sum(1 for _ in open(paths["corpus"], encoding="utf-8")),
                       "vocab_size": len(tok), "trace_styles": dict(sorted(styles.items()))}
    paths["search"] = dict(DEMO_SEARCH)
    paths["system_prompt"] = T.SYSTEM_PROMPT
    paths["seed"], paths["quick"] = seed, quick
    paths["manifest"] = str(out / "manifest.json")
    paths["seconds"] = round(time.perf_counter() - t0, 2)
    Path(paths["manifest"]).write_text(json.dumps(paths, indent=2) + "\n", encoding="utf-8")
    return paths
