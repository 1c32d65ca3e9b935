"""Splice the text-branch identity tokens into a prompt embedding (official convention).

The N tokens go right after BOS of the first 77-token chunk and that chunk's last N rows are dropped,
so every chunk stays 77 long; later chunks of a long prompt are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import UniIDError

CHUNK = 77
EOS_ID = 49407
BOS_ID = 49406


def splice_text_tokens(prompt_embeds: Tensor, tokens: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """[P_0, scale * T, P_1 .. P_{76-N}, later chunks] for prompt_embeds (B, 77*k, C), tokens (1|B, N, C).

    ``scale`` may be a float or a tensor broadcastable to (B, 1, 1) (per-row scales).
    """
    if prompt_embeds.ndim != 3 or tokens.ndim != 3:
        raise UniIDError(
            f"expected prompt embeddings (B, 77*k, C) and tokens (B, N, C), got {tuple(prompt_embeds.shape)} "
            f"and {tuple(tokens.shape)}"
        )
    batch, length, width = prompt_embeds.shape
    count = tokens.shape[1]
    if length < CHUNK or length % CHUNK:
        raise UniIDError(f"prompt embeddings must be whole 77-token chunks, got length {length}")
    if tokens.shape[-1] != width:
        raise UniIDError(
            f"identity tokens are {tokens.shape[-1]} wide but the prompt embedding is {width} wide; "
            "UniID needs an SDXL base model (context width 2048)"
        )
    if tokens.shape[0] not in (1, batch):
        raise UniIDError(f"identity tokens batch {tokens.shape[0]} does not fit prompt batch {batch}")
    if count > CHUNK - 2:
        raise UniIDError(f"{count} identity tokens do not fit a 77-token chunk")
    inserted = tokens.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
    if isinstance(scale, Tensor):
        factor = scale.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
        inserted = inserted * (factor.reshape(-1, 1, 1) if factor.ndim <= 1 else factor)
    elif scale != 1.0:
        inserted = inserted * scale
    inserted = inserted.expand(batch, -1, -1)
    parts = [prompt_embeds[:, :1], inserted, prompt_embeds[:, 1 : CHUNK - count]]
    if length > CHUNK:
        parts.append(prompt_embeds[:, CHUNK:])
    return torch.cat(parts, dim=1)


def dropped_content_rows(
    token_ids: Tensor | Sequence[int] | Sequence[Sequence[int]], n: int, eos_id: int = EOS_ID
) -> int:
    """How many real prompt tokens (not BOS/EOS/padding) the splice drops, worst batch row.

    ``token_ids``: the first chunk's ids (77,) or (B, 77*k); content is what lies between BOS and the
    first EOS of the first chunk. A non-zero result means the prompt's last words lose their effect.
    """
    table = torch.as_tensor(token_ids)
    ids = table.reshape(-1, table.shape[-1])[:, :CHUNK].tolist()
    worst = 0
    for row in ids:
        end = row.index(eos_id) if eos_id in row else len(row)
        content_end = min(end, CHUNK)
        worst = max(worst, max(0, content_end - (CHUNK - n)))
    return worst
