"""Training: the one loop of SFT and RL (``loop``), their steps (``sft``, ``rl``), the optax
policy update, orbax checkpoints, logging, multi-host helpers and the memory planner."""
