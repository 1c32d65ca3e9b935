"""Standalone UniID trainer (accelerate): dataset preparation, two-stage training, checkpoints, export."""
