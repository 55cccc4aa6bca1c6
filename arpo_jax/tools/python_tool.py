"""The Python interpreter tool: model code in, observation text out.

Code is cleaned (markdown fences, common indentation), run in a fresh sandboxed process
(``sandbox.Sandbox``), and its stdout and stderr are turned into one observation text,
truncated to ``max_output_chars`` with a visible marker. Timeouts, resource kills and empty
output all become explanatory text; nothing the code does raises here.
"""

from __future__ import annotations

import signal
import textwrap

from .config import PythonToolConfig
from .protocol import ToolOutput
from .sandbox import Sandbox, SandboxResult

_SIGNAL_NOTES = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGSEGV: "segmentation fault, e.g. a stack overflow from very deep recursion",
    signal.SIGKILL: "killed",
    signal.SIGABRT: "aborted",
}


def clean_code(body: str) -> str:
    """Strips a markdown code fence and common indentation from a call body."""
    text = body.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        first, rest = text.split("\n", 1)
        if first[3:].strip().replace("+", "").replace("-", "").isalnum() or not first[3:].strip():
            body = rest[:-3]
    return textwrap.dedent(body).strip("\n")


def truncate(text: str, limit: int) -> str:
    """Keeps the first 2/3 and last 1/3 of ``limit`` characters, with a marker in between."""
    if len(text) <= limit:
        return text
    head, tail = (2 * limit) // 3, limit // 3
    cut = len(text) - head - tail
    return f"{text[:head]}\n... [output truncated: {cut} characters omitted] ...\n{text[len(text) - tail:]}"


def _exit_note(r: SandboxResult, timeout_s: float, cfg: PythonToolConfig) -> str | None:
    if r.killed == "timeout":
        return f"Error: execution timed out after {timeout_s:g} seconds; the process was killed."
    if r.killed == "output":
        return f"Error: the code printed more than {cfg.output_kill_bytes} bytes; the process was killed."
    if r.killed == "tmp":
        return f"Error: the code wrote more than {cfg.tmp_bytes} bytes to disk; the process was killed."
    if r.killed == "memory":
        return (f"Error: the code used more than {cfg.memory_bytes} bytes of memory (all its processes together); "
                f"it was killed.")
    rc = r.returncode
    if rc is None or rc in (0, 1):
        return None
    sig = -rc if rc < 0 else rc - 128 if 128 < rc < 128 + 65 else None
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        note = _SIGNAL_NOTES.get(sig)
        if sig == signal.SIGKILL and r.wall_s < timeout_s:
            note = "killed, e.g. for exceeding a resource limit"
        return f"Error: the process was terminated by {name}" + (f" ({note})." if note else ".")
    return f"Error: the process exited with status {rc}."


class PythonTool:
    """Runs ``<python>`` calls in a sandbox. Thread-safe; one fresh process per call."""

    name = "python"

    def __init__(self, config: PythonToolConfig | None = None, sandbox: Sandbox | None = None):
        self.config = config or PythonToolConfig()
        self.sandbox = sandbox or Sandbox(self.config)

    @property
    def default_timeout_s(self) -> float:
        """Deadline of a call when the caller gives none."""
        return self.config.timeout_s

    @property
    def mode(self) -> str:
        """"bwrap" or "rlimit"."""
        return self.sandbox.mode

    def describe(self) -> str:
        """One line saying how code is isolated."""
        return self.sandbox.describe()

    def run(self, body: str, timeout_s: float | None = None) -> ToolOutput:
        """Executes one call body and returns its output text and status."""
        cfg = self.config
        timeout_s = cfg.timeout_s if timeout_s is None else min(timeout_s, cfg.timeout_s)
        code = clean_code(body)
        if not code.strip():
            return ToolOutput("Error: the <python> call contains no code.", "error")
        r = self.sandbox.run(code, timeout_s)
        out = r.stdout
        if r.stderr.strip():
            out = (out + ("" if not out or out.endswith("\n") else "\n") + r.stderr) if out else r.stderr
        out = truncate(out.rstrip("\n"), cfg.max_output_chars)
        note = _exit_note(r, timeout_s, cfg)
        meta = {"mode": r.mode, "returncode": r.returncode, "killed": r.killed, "wall_s": r.wall_s,
                "token": r.token, "uid": r.uid, "output_bytes": r.stdout_bytes + r.stderr_bytes,
                "memory_peak": r.memory_peak}
        if r.killed == "timeout":
            status = "timeout"
        elif note is not None or r.returncode != 0:
            status = "error"
        elif not out.strip():
            return ToolOutput(cfg.no_output_message, "no_output", meta)
        else:
            status = "ok"
        text = "\n".join(p for p in (out, note) if p) or "Error: the process failed without output."
        return ToolOutput(text, status, meta)
