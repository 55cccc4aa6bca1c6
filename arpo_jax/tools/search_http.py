"""HTTP client for a Search-R1-style retrieval server (``POST /retrieve``).

Request: ``{"queries": [...], "topk": k, "return_scores": true}``. Response:
``{"result": [[hit, ...], ...]}`` with one list per query, each hit a string, a document
dict (``contents`` = ``'"Title"\\ntext'`` as in Search-R1, or ``title``/``text``), or
``{"document": {...}, "score": s}``. Every request has a timeout; connection failures,
timeouts and 5xx/429 answers are retried with exponential backoff, bounded by the call's
deadline. A server that stays down yields an "unavailable" observation, never an exception.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

from .config import SearchConfig
from .protocol import ToolOutput
from .search import format_pages


class SearchUnavailable(RuntimeError):
    """The retrieval server could not answer (down, slow, or a server error)."""


def hit_snippet(hit) -> str:
    """One hit of a retrieval response as a single-line snippet (``title: text``)."""
    if isinstance(hit, str):
        return " ".join(hit.split())
    if not isinstance(hit, dict):
        return " ".join(str(hit).split())
    doc = hit.get("document", hit)
    if not isinstance(doc, dict):
        return " ".join(str(doc).split())
    if "contents" in doc:
        title, _, text = str(doc["contents"]).partition("\n")
        title = title.strip().strip('"')
    else:
        title, text = str(doc.get("title", "")), str(doc.get("text", ""))
    text = " ".join(text.split())
    return f"{title}: {text}" if title and text else (title or text)


class RetrievalClient:
    """Minimal retrieval client: ``retrieve(queries, k)`` -> snippets per query."""

    def __init__(self, url: str, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.5):
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s

    def _post(self, payload: dict, timeout_s: float) -> dict:
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def retrieve(self, queries: list[str], k: int, deadline: float | None = None) -> list[list[str]]:
        """Snippets for each query; raises ``SearchUnavailable`` after the last failed try."""
        payload = {"queries": list(queries), "topk": k, "return_scores": True}
        last = "no attempt"
        for attempt in range(self.retries + 1):
            timeout = self.timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0.05:
                    break
            try:
                body = self._post(payload, timeout)
                result = body["result"] if isinstance(body, dict) else body
                if not isinstance(result, list) or len(result) != len(queries):
                    raise SearchUnavailable(f"malformed response from {self.url}")
                return [[hit_snippet(h) for h in (hits or [])][:k] for hits in result]
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:
                    raise SearchUnavailable(f"{self.url} answered {last}") from None
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
                reason = getattr(exc, "reason", exc)
                last = "timed out" if isinstance(reason, (socket.timeout, TimeoutError)) else str(reason)
            except (ValueError, KeyError, TypeError) as exc:
                raise SearchUnavailable(f"malformed response from {self.url}: {type(exc).__name__}") from None
            if attempt < self.retries:
                delay = self.backoff_s * (2 ** attempt)
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - time.monotonic()))
                time.sleep(delay)
        raise SearchUnavailable(f"{self.url} unavailable after {self.retries + 1} attempts ({last})")


class HttpBackend:
    """Search backend that asks a retrieval server."""

    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        self.client = RetrievalClient(cfg.url, cfg.timeout_s, cfg.retries, cfg.backoff_s)

    def search(self, query: str, timeout_s: float | None = None) -> ToolOutput:
        """Top-k pages from the server, or an "unavailable" observation."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            (snippets,) = self.client.retrieve([query.strip()], self.cfg.top_k, deadline)
        except SearchUnavailable as exc:
            return ToolOutput(f"Error: search is unavailable: {exc}", "unavailable", {"backend": "http"})
        text = format_pages(snippets, self.cfg.top_k, self.cfg.snippet_chars)
        return ToolOutput(text, "ok", {"backend": "http", "hits": len(snippets)})
