"""arpo_jax: Agentic Reinforced Policy Optimization (ARPO) in JAX."""

__version__ = "0.1.0"
