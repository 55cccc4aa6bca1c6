"""Where the released ARPO data lives for tests (never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "arpo"


def released(rel: str) -> Path:
    """Path of a released file under ``../shared/data/arpo``; skips the test when absent."""
    path = DATA_ROOT / rel
    if not path.exists():
        pytest.skip(f"released data not present: {path}")
    return path
