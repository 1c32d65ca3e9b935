"""The precision names every front end offers (fp16, bf16, fp32) and their torch dtypes."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""Short precision name -> torch dtype, in the order the nodes list them."""


def dtype_label(dtype: torch.dtype) -> str:
    """A dtype as written into file metadata and image records ("float16", "bfloat16", "float32")."""
    return str(dtype).removeprefix("torch.")
