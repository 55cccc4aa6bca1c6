"""Applications built on the library, kept apart from it: the built-in demo (``demo``), the
memory planner behind ``arpo-jax plan`` (``plan``, ``plan_estimate``) and the sampler benchmark
(``sampler_bench``, which imports torch). Nothing in the library imports this package."""
