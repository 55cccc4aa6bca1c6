"""The analysis side of arpo_jax.eval (metrics, entropy, scoring) must not import JAX."""

from __future__ import annotations

import subprocess
import sys


def test_eval_analysis_imports_no_jax():
    code = (
        "import sys, arpo_jax.eval, arpo_jax.eval.metrics, arpo_jax.eval.entropy, arpo_jax.eval.trajectories\n"
        "print('jax' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
