"""The search tool, offline first: BM25 over a local corpus, or replay of the release's cache.

Results are formatted as the ARPO release does: ``"Page i: snippet"`` lines, top ``k``,
each snippet cut to ``snippet_chars``. ``Bm25Index`` (bm25s, with an English stemmer when
PyStemmer is installed) is built once per corpus file and cached on disk. ``CacheBackend``
replays ``search_cache.json`` byte-for-byte for cached queries and falls back to BM25 over
the cached snippets for new ones. The HTTP retrieval client lives in ``search_http.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path

from .config import SearchConfig
from .protocol import ToolOutput

NO_RESULTS = "No search results found."
_PAGE_RE = re.compile(r"(?m)^Page \d+: ")
_INDEX_VERSION = "1"


def format_pages(snippets: list[str], top_k: int = 10, snippet_chars: int = 1000) -> str:
    """The release's result text: one ``Page i: snippet`` line per result."""
    if not snippets:
        return NO_RESULTS
    return "\n".join(f"Page {i}: {s[:snippet_chars]}" for i, s in enumerate(snippets[:top_k], 1))


def split_pages(result: str) -> list[str]:
    """Inverse of ``format_pages``: the snippets of a formatted result."""
    parts = _PAGE_RE.split(result)
    return [p.strip() for p in parts[1:] if p.strip()]


def _stemmer():
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:
        return None


class Bm25Index:
    """BM25 over ``{"id", "title", "text"}`` documents; the index is cached in ``index_dir``."""

    def __init__(self, docs: list[dict], key: str, index_dir: str = ""):
        import bm25s

        self._bm25s = bm25s
        self.docs = docs
        self.stemmer = _stemmer()
        self._lock = threading.Lock()
        root = Path(index_dir or Path.home() / ".cache" / "arpo_jax" / "bm25")
        stem = "stem" if self.stemmer is not None else "nostem"
        digest = hashlib.sha256(f"{_INDEX_VERSION}|{stem}|{key}".encode()).hexdigest()[:20]
        self.path = root / digest
        self.retriever = self._load_or_build(root)

    @classmethod
    def from_jsonl(cls, path: str, index_dir: str = "") -> Bm25Index:
        """Loads a JSONL corpus (one ``{"id", "title", "text"}`` per line) and its index."""
        docs = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        d = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                    docs.append({"id": str(d.get("id", n)), "title": str(d.get("title", "")),
                                 "text": str(d.get("text", ""))})
        return cls(docs, key=_file_key(path), index_dir=index_dir)

    def _texts(self) -> list[str]:
        return [f"{d.get('title', '')} {d.get('text', '')}" for d in self.docs]

    def _load_or_build(self, root: Path):
        bm25s = self._bm25s
        if (self.path / "params.index.json").exists():
            try:
                return bm25s.BM25.load(str(self.path), show_progress=False, verbosity=0)
            except Exception:
                pass  # a damaged cache is rebuilt below
        tokens = bm25s.tokenize(self._texts(), stopwords="en", stemmer=self.stemmer, show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".building-", dir=root)
        retriever.save(tmp, show_progress=False)
        try:
            os.rename(tmp, self.path)  # atomic; a concurrent builder may have won the race
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return retriever

    def search(self, query: str, k: int = 10) -> list[tuple[dict, float]]:
        """The best ``k`` documents with a positive score, best first."""
        if not self.docs:
            return []
        bm25s = self._bm25s
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return []
        with self._lock:
            ids, scores = self.retriever.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False)
        return [(self.docs[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]


def _file_key(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def _doc_snippet(doc: dict) -> str:
    title, text = doc.get("title", "").strip(), " ".join(doc.get("text", "").split())
    return f"{title}: {text}" if title else text


class CorpusBackend:
    """BM25 search over a local JSONL corpus."""

    def __init__(self, cfg: SearchConfig):
        if not cfg.corpus_path or not os.path.exists(cfg.corpus_path):
            raise FileNotFoundError(f"search corpus not found: {cfg.corpus_path!r} (SearchConfig.corpus_path)")
        self.cfg = cfg
        self.index = Bm25Index.from_jsonl(cfg.corpus_path, cfg.index_dir)

    def search(self, query: str, timeout_s: float | None = None) -> ToolOutput:
        """Top-k documents as release-formatted pages."""
        hits = self.index.search(query.strip(), self.cfg.top_k)
        text = format_pages([_doc_snippet(d) for d, _ in hits], self.cfg.top_k, self.cfg.snippet_chars)
        return ToolOutput(text, "ok", {"backend": "bm25", "hits": len(hits)})


def _normalize(query: str) -> str:
    return " ".join(query.split()).casefold()


class CacheBackend:
    """Replays the release's search cache; BM25 over its snippets for queries it lacks."""

    def __init__(self, cfg: SearchConfig):
        if not cfg.cache_path or not os.path.exists(cfg.cache_path):
            raise FileNotFoundError(f"search cache not found: {cfg.cache_path!r} (SearchConfig.cache_path)")
        self.cfg = cfg
        with open(cfg.cache_path, encoding="utf-8") as f:
            self.cache: dict[str, str] = json.load(f)
        self.normalized = {_normalize(k): k for k in self.cache}
        self._index: Bm25Index | None = None
        self._lock = threading.Lock()

    @property
    def index(self) -> Bm25Index:
        """BM25 over every cached snippet (built on first use, cached on disk)."""
        with self._lock:
            if self._index is None:
                docs = []
                for q, result in self.cache.items():
                    title = re.sub(r"^search query:\s*", "", q.strip())[:200]
                    for j, snippet in enumerate(split_pages(result)):
                        docs.append({"id": f"{len(docs)}", "title": title, "text": snippet, "query": q, "page": j})
                self._index = Bm25Index(docs, key="cache|" + _file_key(self.cfg.cache_path),
                                        index_dir=self.cfg.index_dir)
            return self._index

    def search(self, query: str, timeout_s: float | None = None) -> ToolOutput:
        """Cached result if the query is cached (exactly, then up to case/spaces), else BM25."""
        for q in (query, query.strip()):
            if q in self.cache:
                return ToolOutput(self.cache[q], "ok", {"backend": "cache", "match": "exact"})
        key = self.normalized.get(_normalize(query))
        if key is not None:
            return ToolOutput(self.cache[key], "ok", {"backend": "cache", "match": "normalized"})
        if not self.cfg.cache_fallback_bm25:
            return ToolOutput(NO_RESULTS, "ok", {"backend": "cache", "match": "none"})
        seen, snippets, sources = set(), [], []
        for doc, _ in self.index.search(query.strip(), 3 * self.cfg.top_k):
            if doc["text"] not in seen:
                seen.add(doc["text"])
                snippets.append(doc["text"])
                sources.append(doc["query"])
        snippets, sources = snippets[: self.cfg.top_k], sources[: self.cfg.top_k]
        text = format_pages(snippets, self.cfg.top_k, self.cfg.snippet_chars)
        return ToolOutput(text, "ok", {"backend": "cache", "match": "bm25", "sources": sources})


class SearchTool:
    """Runs ``<search>`` calls on the configured backend. Thread-safe."""

    name = "search"

    def __init__(self, config: SearchConfig | None = None, backend=None):
        self.config = config or SearchConfig()
        if backend is None:
            if self.config.backend == "cache":
                backend = CacheBackend(self.config)
            elif self.config.backend == "bm25":
                backend = CorpusBackend(self.config)
            else:
                from .search_http import HttpBackend

                backend = HttpBackend(self.config)
        self.backend = backend

    @property
    def default_timeout_s(self) -> float:
        """Deadline of a call when the caller gives none (all HTTP attempts and backoffs)."""
        c = self.config
        if c.backend != "http":
            return 30.0
        return c.timeout_s * (c.retries + 1) + c.backoff_s * (2 ** c.retries - 1) + 1.0

    def describe(self) -> str:
        """One line naming the backend."""
        return f"search backend {self.config.backend}"

    def run(self, body: str, timeout_s: float | None = None) -> ToolOutput:
        """Searches for the call body (cut to ``max_query_chars``; backends strip it)."""
        query = body[: self.config.max_query_chars]
        if not query.strip():
            return ToolOutput("Error: the <search> call contains no query.", "error")
        return self.backend.search(query, timeout_s)
