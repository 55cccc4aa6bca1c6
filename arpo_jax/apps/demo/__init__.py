"""The built-in demo (``arpo-jax demo``)."""
