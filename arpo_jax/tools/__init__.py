"""Host-side tools for ARPO agents: call parsing, sandboxed Python, offline search, dispatch.

This package does not import JAX. The rollout engine uses:

* ``parse_tool_call(text, protocol, stop)`` -> ``ToolCall | ParseError | None``;
* ``ToolDispatcher`` (``submit`` -> ``Future[Observation]``, ``run_batch``, ``stats``);
* ``Observation.text``: the formatted result (release: ``" <result>\\n{text}\\n</result>"``);
* ``stop_sequences(protocol)``: the closing tags at which decoding stops.

Tools: ``PythonTool`` (bubblewrap sandbox, or an explicitly chosen weaker fallback) and
``SearchTool`` (cache replay, local BM25 corpus, or a Search-R1-style HTTP server).
"""

from .config import DispatcherConfig, ProtocolConfig, PythonToolConfig, SearchConfig
from .dispatcher import ToolDispatcher, ToolStats
from .protocol import (
    Observation,
    ParseError,
    ToolCall,
    ToolOutput,
    format_observation,
    parse_tool_call,
    stop_sequences,
)
from .python_tool import PythonTool, clean_code, truncate
from .sandbox import Sandbox, SandboxResult, SandboxUnavailable, choose_mode
from .search import Bm25Index, CacheBackend, CorpusBackend, SearchTool, format_pages, split_pages
from .search_http import HttpBackend, RetrievalClient, SearchUnavailable

__all__ = [
    "Bm25Index",
    "CacheBackend",
    "CorpusBackend",
    "DispatcherConfig",
    "HttpBackend",
    "Observation",
    "ParseError",
    "ProtocolConfig",
    "PythonTool",
    "PythonToolConfig",
    "RetrievalClient",
    "Sandbox",
    "SandboxResult",
    "SandboxUnavailable",
    "SearchConfig",
    "SearchTool",
    "SearchUnavailable",
    "ToolCall",
    "ToolDispatcher",
    "ToolOutput",
    "ToolStats",
    "choose_mode",
    "clean_code",
    "format_observation",
    "format_pages",
    "parse_tool_call",
    "split_pages",
    "stop_sequences",
    "truncate",
]
