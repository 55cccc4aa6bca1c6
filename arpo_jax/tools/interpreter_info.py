"""What the interpreter that runs model code needs: its path, prefixes and site-packages."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

from .config import PythonToolConfig


def interpreter(cfg: PythonToolConfig) -> str:
    """Absolute path of the interpreter that runs model code."""
    exe = cfg.python_executable or sys.executable
    found = shutil.which(exe) if os.sep not in exe else exe
    if not found or not os.path.exists(found):
        raise FileNotFoundError(f"python_executable {exe!r} not found")
    return os.path.abspath(found)


@functools.lru_cache(maxsize=16)
def _interpreter_info(exe: str) -> dict:
    probe = ("import sys, json, site; print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix,"
             " sys.base_exec_prefix], 'site': site.getsitepackages()}))")
    out = subprocess.run([exe, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def interpreter_prefixes(exe: str) -> tuple[str, ...]:
    """Directories the interpreter needs (its prefixes), asked of the interpreter itself."""
    dirs = {os.path.dirname(os.path.dirname(exe))}
    for p in _interpreter_info(exe)["prefixes"]:
        dirs.update({p, os.path.realpath(p)})
    dirs.add(os.path.dirname(os.path.dirname(os.path.realpath(exe))))
    return tuple(sorted(d for d in dirs if d and d != "/" and os.path.isdir(d)))


def site_dirs(exe: str) -> list[str]:
    """The interpreter's site-packages directories (added by the runner under ``-S``)."""
    return [d for d in _interpreter_info(exe)["site"] if os.path.isdir(d)]
