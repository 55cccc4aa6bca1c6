"""Offline search: release formatting, cache replay, BM25 over cached snippets and a corpus."""

from __future__ import annotations

import json

import pytest

from arpo_jax.tools import Bm25Index, SearchConfig, SearchTool, format_pages, split_pages

PARAPHRASES = {
    "Amy Smart film debut Campfire Tales": "What was Amy Smart's first movie role, in Campfire Tales?",
    "search query: When was Francis Ford Coppola born?": "birth date of director Francis Ford Coppola",
    "search query: What nationality was Yuri Ozerov and John Cromwell?":
        "Which country were Yuri Ozerov and John Cromwell from?",
    "search query: Which film did South Korean actor Song Kang-Ho appear in in 2014?":
        "Song Kang-ho movies released in 2014",
    "Red Rose Cabinetry founded year Lancaster Pennsylvania":
        "When was Red Rose Cabinetry in Lancaster, PA established?",
    "search query: What valley is Valtellina located in?": "Valtellina is the valley of which river?",
    "search query: Who plays the lead role in the British sitcom Black Adder?":
        "lead actor of the Blackadder comedy series",
}


@pytest.fixture(scope="module")
def cache_tool(search_cache_path, tmp_path_factory):
    cfg = SearchConfig(cache_path=str(search_cache_path), index_dir=str(tmp_path_factory.mktemp("bm25")))
    return SearchTool(cfg)


def test_format_is_the_release_one():
    text = format_pages(["a" * 1500, "b"], top_k=10, snippet_chars=1000)
    assert text == "Page 1: " + "a" * 1000 + "\nPage 2: b"
    assert format_pages([str(i) for i in range(20)]).count("\n") == 9
    assert split_pages("Page 1: x y\nPage 2: z") == ["x y", "z"]
    assert format_pages([]) == "No search results found."


def test_cache_replay_is_byte_identical(cache_tool, search_cache_path):
    cache = json.loads(search_cache_path.read_text(encoding="utf-8"))
    for query in list(cache)[::50]:
        out = cache_tool.run(query)
        assert out.content == cache[query]
        assert out.meta["match"] == "exact"
    query = "Amy Smart film debut Campfire Tales"
    assert cache_tool.run(f"  {query}\n").content == cache[query]
    assert cache_tool.run(query.upper()).meta["match"] == "normalized"


@pytest.mark.parametrize("original", list(PARAPHRASES))
def test_bm25_finds_the_cached_result_for_paraphrases(cache_tool, search_cache_path, original):
    cache = json.loads(search_cache_path.read_text(encoding="utf-8"))
    out = cache_tool.run(PARAPHRASES[original])
    assert out.meta["match"] == "bm25"
    assert out.meta["sources"][0] == original
    pages = split_pages(out.content)
    assert pages[0] in split_pages(cache[original])
    assert len(pages) == 10 and out.content.startswith("Page 1: ")


def test_unknown_query_and_empty_query(cache_tool):
    assert cache_tool.run("zzqx vvkj").content == "No search results found."
    empty = cache_tool.run("   ")
    assert empty.status == "error" and "no query" in empty.content


def _write_corpus(path, n=50):
    with open(path, "w", encoding="utf-8") as f:
        docs = [{"id": f"d{i}", "title": f"Doc {i}", "text": f"filler words number {i} about nothing"}
                for i in range(n)]
        docs += [{"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
                 {"id": "lyon", "title": "Lyon", "text": "Lyon is a city in France known for cuisine."}]
        for d in docs:
            f.write(json.dumps(d) + "\n")


def test_corpus_bm25_and_its_disk_cache(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    _write_corpus(corpus)
    cfg = SearchConfig(backend="bm25", corpus_path=str(corpus), index_dir=str(tmp_path / "idx"), top_k=2)
    out = SearchTool(cfg).run("What is the capital city of France?")
    assert out.content.startswith("Page 1: Paris: Paris is the capital")
    assert out.content.count("Page ") == 2
    cached = list((tmp_path / "idx").iterdir())
    assert len(cached) == 1 and (cached[0] / "params.index.json").exists()
    again = Bm25Index.from_jsonl(str(corpus), str(tmp_path / "idx"))
    assert again.path == cached[0]
    assert again.search("capital of France", 1)[0][0]["id"] == "paris"


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="search cache not found"):
        SearchTool(SearchConfig(cache_path=str(tmp_path / "nope.json")))
    with pytest.raises(FileNotFoundError, match="search corpus not found"):
        SearchTool(SearchConfig(backend="bm25", corpus_path=""))
    with pytest.raises(ValueError, match="backend must be"):
        SearchConfig(backend="bing")
