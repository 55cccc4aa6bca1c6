"""The dispatcher builder of train and eval (``tools.build``): which tools a ``ToolsConfig`` gets."""

import json

import pytest

from arpo_jax.tools.build import build_dispatcher, search_available
from arpo_jax.tools.config import ProtocolConfig, SearchConfig, ToolsConfig


def test_search_needs_the_source_its_backend_reads(tmp_path):
    assert search_available(SearchConfig(backend="http"))
    assert search_available(SearchConfig(backend="cache", cache_path="c.json"))
    assert search_available(SearchConfig(backend="bm25", corpus_path="c.jsonl"))
    assert not search_available(SearchConfig(backend="cache")) and not search_available(SearchConfig(backend="bm25"))
    with pytest.raises(ValueError, match="backend=cache reads tools.search.cache_path.*set tools.search.backend=bm25"):
        search_available(SearchConfig(backend="cache", corpus_path="c.jsonl"))
    with pytest.raises(ValueError, match="backend=bm25 reads tools.search.corpus_path.*backend=cache"):
        search_available(SearchConfig(backend="bm25", cache_path="c.json"))


def test_the_protocol_names_the_tools_and_search_without_a_source_is_off(tmp_path, capsys):
    cache = tmp_path / "cache.json"
    cache.write_text(json.dumps({"who": "Page 1: someone"}))
    search_only = ProtocolConfig(tools=("search",))
    with build_dispatcher(ToolsConfig(protocol=search_only, search=SearchConfig(cache_path=str(cache)))) as d:
        assert set(d.tools) == {"search"}
    with build_dispatcher(ToolsConfig(protocol=search_only)) as d:
        assert d.tools == {}
    assert "note: the search tool is off (tools.search.backend=cache without tools.search.cache_path)" in \
        capsys.readouterr().err
