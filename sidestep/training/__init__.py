"""Training: objective, loop, optimisers, checkpoints and resume, logging and events."""
