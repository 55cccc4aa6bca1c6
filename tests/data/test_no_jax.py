"""The data package (TFDS store included) must not import JAX or TensorFlow."""

from __future__ import annotations

import subprocess
import sys


def test_data_imports_neither_jax_nor_tensorflow():
    code = (
        "import sys, arpo_jax.data, arpo_jax.data.tfds_builder\n"
        "print('jax' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
