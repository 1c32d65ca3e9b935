"""UniID in plain PyTorch: models, checkpoints, face pipeline, identity encoding and attention math.

This package never imports ComfyUI; the node pack and the trainer both build on it.
"""

__version__ = "0.1.0"
