"""The one place a ``ToolDispatcher`` is built from a ``ToolsConfig`` (training and evaluation).

The tools are those ``tools.protocol.tools`` names. Python is always built (its sandbox is
checked by the caller with ``arpo_jax.tools.check.check_dispatcher`` before any model code
runs). Search is built when its backend has what it serves from: a server (``backend: http``),
a cache file (``cache`` with ``cache_path``) or a JSONL corpus (``bm25`` with ``corpus_path``).
With none of them configured, the tool is off and ``<search>`` calls are answered as
unavailable (a note says so); a source given for the other backend is an error naming the fix.
"""

from __future__ import annotations

import sys

from .config import SearchConfig, ToolsConfig
from .dispatcher import ToolDispatcher

SEARCH_SOURCES = {"cache": "cache_path", "bm25": "corpus_path"}  # backend -> the field it reads


def search_available(search: SearchConfig) -> bool:
    """Whether ``search``'s backend has its source (see the module docstring); raises ValueError
    when it has none but the other backend's source is set (a backend/path mix-up)."""
    if search.backend == "http":
        return True
    need = SEARCH_SOURCES[search.backend]
    if getattr(search, need):
        return True
    other_backend, other = next((b, f) for b, f in SEARCH_SOURCES.items() if b != search.backend)
    if getattr(search, other):
        raise ValueError(f"tools.search.backend={search.backend} reads tools.search.{need}, which is empty, but "
                         f"tools.search.{other} is set: set tools.search.backend={other_backend} or "
                         f"tools.search.{need}")
    return False


def build_dispatcher(tools: ToolsConfig) -> ToolDispatcher:
    """The dispatcher of the tools ``tools.protocol`` names (search only when available)."""
    names = set(tools.protocol.tools)
    search = "search" in names and search_available(tools.search)
    if "search" in names and not search:
        print(f"note: the search tool is off (tools.search.backend={tools.search.backend} without "
              f"tools.search.{SEARCH_SOURCES[tools.search.backend]}); <search> calls are answered as unavailable",
              file=sys.stderr, flush=True)
    return ToolDispatcher.from_configs(python=tools.python if "python" in names else None,
                                       search=tools.search if search else None,
                                       config=tools.dispatcher, protocol=tools.protocol)
