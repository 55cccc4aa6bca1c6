"""Training: the optax policy update, RL and SFT loops, checkpoints, logging."""
