"""Mathematical equivalence of final answers, with HuggingFace ``math-verify``.

``math_equal("0.5", "\\frac{1}{2}")`` is True, ``math_equal("-1", "1")`` is False. Answers
are parsed as LaTeX (or plain expressions) into SymPy and compared symbolically and
numerically. Time is bounded: every check runs in a long-lived helper process, on its main
thread (where math-verify's own ``SIGALRM`` timeouts work), and the helper is killed and
replaced when it overruns. Not in this process: a ``SIGALRM`` that lands while a garbage
collector callback runs (JAX registers one) is swallowed ("Exception ignored in
_xla_gc_callback"), and the timeout is lost. Over-long answers are rejected without parsing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

MAX_ANSWER_CHARS = 1000
STARTUP_ALLOWANCE_S = 30


def _plain(s: str) -> str:
    return "".join(s.split()).strip("$").lower()


def _as_latex(s: str) -> str:
    s = s.replace("\\$", "").strip()  # currency: "\\$18.90" -> "18.90"
    if "$" in s or "\\boxed" in s or s.startswith(("\\(", "\\[")):
        return s
    return f"${s}$"


def _verify(pred: str, gold: str, timeout_s: int) -> bool:
    """math-verify on the current (main) thread with its signal-based timeouts."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it logs whole inputs on timeout
    gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout_s)
    pred_parsed = parse(_as_latex(pred), parsing_timeout=timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


class _Worker:
    """A long-lived ``python -m arpo_jax.rewards.math_equiv`` child answering JSON lines.

    The child runs each check on its own main thread (so math-verify's timeouts work) and is
    killed and replaced when it does not answer in time (a lost timeout, or a C routine that
    does not return). About 0.7 s to start, then about 1 ms per check.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
        return subprocess.Popen(
            [sys.executable, "-m", "arpo_jax.rewards.math_equiv"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def check(self, pred: str, gold: str, timeout_s: int) -> bool:
        with self.lock:
            fresh = self.proc is None or self.proc.poll() is not None
            if fresh:
                self.proc = self._start()
            assert self.proc is not None and self.proc.stdin and self.proc.stdout
            limit = 2 * timeout_s + 2 + (STARTUP_ALLOWANCE_S if fresh else 0)
            try:
                self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "timeout": timeout_s}) + "\n")
                self.proc.stdin.flush()
                ready, _, _ = select.select([self.proc.stdout], [], [], limit)
                line = self.proc.stdout.readline() if ready else ""
                return bool(json.loads(line)["equal"]) if line else self._fail()
            except (OSError, ValueError, KeyError):
                return self._fail()

    def _fail(self) -> bool:
        self._kill()
        return False


_WORKER = _Worker()


def _serve() -> None:
    """Child loop: one JSON request per stdin line, one ``{"equal": bool}`` per stdout line."""
    out, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        try:
            req = json.loads(line)
            equal = _verify(req["pred"], req["gold"], int(req["timeout"]))
        except Exception:  # noqa: BLE001
            equal = False
        out.write(json.dumps({"equal": equal}) + "\n")
        out.flush()


def math_equal(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether answer ``pred`` is mathematically equal to reference ``gold``.

    Identical strings (ignoring spaces, ``$`` and case) are equal without parsing; answers
    that cannot be parsed, are longer than ``MAX_ANSWER_CHARS`` or time out are not equal.
    """
    if not pred.strip() or not gold.strip():
        return False
    if _plain(pred) == _plain(gold):
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    seconds = max(1, math.ceil(timeout_s))
    try:
        return _WORKER.check(pred, gold, seconds)
    except Exception:  # noqa: BLE001 - a parser failure means "not shown equal"
        return False


if __name__ == "__main__":
    _serve()
