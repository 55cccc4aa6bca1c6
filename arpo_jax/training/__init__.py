"""Training: the one loop of SFT and RL (``loop``), their steps (``sft``, ``rl``), the optax
policy update, orbax checkpoints, logging and multi-host helpers (the memory planner is an
application: ``arpo_jax.apps.plan``)."""
