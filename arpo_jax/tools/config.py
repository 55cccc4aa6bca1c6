"""Typed configs of the tool layer (plain dataclasses; no JAX).

``ProtocolConfig`` says how the model writes calls and how results are shown to it;
``PythonToolConfig`` sets the sandbox and its limits; ``SearchConfig`` picks and tunes the
search backend; ``DispatcherConfig`` sizes the host-side concurrency; ``ToolsConfig`` holds
the four. Defaults follow the ARPO release where it has one (observation format, top 10
pages, 1000 characters a page).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProtocolConfig:
    """How tool calls appear in model text and how observations are formatted.

    Attributes:
        tools: tag names the model may call, e.g. ``<python>…</python>``.
        observation_template: wraps a tool's text; ``{text}`` is replaced (release format).
        non_tool_tags: tags that are not calls (never reported as unknown tools).
        max_body_chars: a call body longer than this is rejected as absurd.
    """

    tools: tuple[str, ...] = ("python", "search")
    observation_template: str = " <result>\n{text}\n</result>"
    non_tool_tags: tuple[str, ...] = ("think", "answer", "result", "information", "reasoning")
    max_body_chars: int = 32_768


@dataclass(frozen=True)
class PythonToolConfig:
    """The sandboxed Python interpreter tool.

    Attributes:
        python_executable: interpreter that runs model code ("" = the host's own); its
            installed packages (numpy, sympy, ...) are what the code can import.
        sandbox: "bwrap" (bubblewrap; the default, and required: the tool refuses to start
            when bubblewrap cannot run here, saying why) or "rlimit" (the weaker fallback,
            chosen explicitly: no mount namespace; Landlock, a per-call uid under root and
            resource limits; see docs/sandbox.md for what it does not stop).
        timeout_s: wall-clock deadline per call; the whole process tree is killed after it.
        cpu_seconds: RLIMIT_CPU; 0 means ceil(timeout_s) + 1.
        memory_bytes: memory of the whole call, all its processes together (a cgroup where
            the host allows one, else ``fallback_processes`` × address space per process).
        memory_cap: how ``memory_bytes`` is enforced: "auto" (a per-call cgroup when the host
            can create one, else the process-count cap), "cgroup" (required) or "processes".
        fallback_processes: without a cgroup, the call's process (and thread) limit; each
            process then gets ``memory_bytes / fallback_processes`` of address space.
        max_file_bytes: RLIMIT_FSIZE (largest file the code may write).
        tmp_bytes: size of the private writable /tmp.
        max_open_files: RLIMIT_NOFILE.
        max_processes: processes (and threads) the call may have at once (with a cgroup).
        max_output_chars: stdout+stderr kept in the observation (head and tail kept).
        output_kill_bytes: the process is killed once it has printed this much.
        print_last_expression: print a trailing bare expression, as the release does.
        fast_startup: start the interpreter with ``-S`` and add its site-packages directly,
            skipping editable-install and setuptools ``.pth`` hooks (about 25 ms less a call).
        extra_ro_binds: extra host paths made visible read-only inside the sandbox.
        env: extra environment variables for the code.
        sandbox_uid_base: first of the unprivileged uids used per call when running as root.
        sandbox_uid_count: how many such uids (one per concurrent call).
        no_output_message: the observation when the code ran fine but printed nothing.
    """

    python_executable: str = ""
    sandbox: str = "bwrap"
    timeout_s: float = 30.0
    cpu_seconds: int = 0
    memory_bytes: int = 2 << 30
    memory_cap: str = "auto"
    fallback_processes: int = 4
    max_file_bytes: int = 64 << 20
    tmp_bytes: int = 64 << 20
    max_open_files: int = 256
    max_processes: int = 32
    max_output_chars: int = 8192
    output_kill_bytes: int = 16 << 20
    print_last_expression: bool = True
    fast_startup: bool = True
    extra_ro_binds: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    sandbox_uid_base: int = 1_500_000
    sandbox_uid_count: int = 4096
    no_output_message: str = (
        "The code ran without errors but printed nothing. Use print() to show values."
    )

    def __post_init__(self) -> None:
        if self.sandbox not in ("bwrap", "rlimit"):
            raise ValueError(f"tools.python.sandbox must be bwrap or rlimit (the explicit weaker fallback), "
                             f"not {self.sandbox!r}")
        if self.memory_cap not in ("auto", "cgroup", "processes"):
            raise ValueError(f"tools.python.memory_cap must be auto, cgroup or processes, not {self.memory_cap!r}")
        if self.fallback_processes < 1 or self.max_processes < 1:
            raise ValueError("tools.python.fallback_processes and max_processes must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError(f"PythonToolConfig.timeout_s must be positive, got {self.timeout_s}")


@dataclass(frozen=True)
class SearchConfig:
    """The search tool: offline BM25 corpus, cache replay, or a retrieval server.

    Attributes:
        backend: "cache" (replay ``cache_path``, BM25 over its snippets on a miss),
            "bm25" (BM25 over the JSONL corpus ``corpus_path``) or "http" (``url``).
        top_k: pages returned (release: 10).
        snippet_chars: characters kept per page (release: 1000).
        cache_path: search cache in the release's JSON format (query -> formatted result).
        cache_fallback_bm25: on a cache miss, search the cached snippets with BM25.
        corpus_path: JSONL with one ``{"id", "title", "text"}`` object per line.
        index_dir: where BM25 indexes are cached ("" = ~/.cache/arpo_jax/bm25).
        url: Search-R1-style endpoint, ``POST {"queries": [...], "topk": k}``.
        timeout_s: per-request HTTP timeout.
        retries: extra HTTP attempts after the first one fails.
        backoff_s: first retry delay; doubled for every further retry.
        max_query_chars: longer queries are cut to this length.
    """

    backend: str = "cache"
    top_k: int = 10
    snippet_chars: int = 1000
    cache_path: str = ""
    cache_fallback_bm25: bool = True
    corpus_path: str = ""
    index_dir: str = ""
    url: str = "http://127.0.0.1:8000/retrieve"
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.5
    max_query_chars: int = 1000

    def __post_init__(self) -> None:
        if self.backend not in ("cache", "bm25", "http"):
            raise ValueError(f"SearchConfig.backend must be cache, bm25 or http, not {self.backend!r}")
        if self.top_k < 1:
            raise ValueError(f"SearchConfig.top_k must be at least 1, got {self.top_k}")


@dataclass(frozen=True)
class DispatcherConfig:
    """Host-side concurrency of tool calls.

    Attributes:
        max_workers: threads running calls at once, across all tools.
        tool_concurrency: optional per-tool cap, e.g. ``{"search": 8}``.
        deadline_grace_s: how long past a tool's own deadline ``run_batch`` waits before
            answering with a timeout observation.
    """

    max_workers: int = 64
    tool_concurrency: dict[str, int] = field(default_factory=dict)
    deadline_grace_s: float = 5.0


@dataclass(frozen=True)
class ToolsConfig:
    """The agent's tools: the ``tools`` section of the train and eval configs
    (``arpo_jax.tools.build.build_dispatcher`` builds them)."""

    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    python: PythonToolConfig = field(default_factory=PythonToolConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
