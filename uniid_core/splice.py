"""Splice the text-branch identity tokens into a prompt embedding (official convention).

The N tokens go right after BOS of the first 77-token chunk and that chunk's last N rows are dropped,
so every chunk stays 77 long; later chunks of a long prompt are untouched. The chunk length and the
tokenizer's BOS/EOS ids are the base-model family's (uniid_core.family).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import UniIDError
from .family import SDXL, BaseModelFamily


def splice_text_tokens(
    prompt_embeds: Tensor, tokens: Tensor, scale: float | Tensor = 1.0, family: BaseModelFamily = SDXL
) -> Tensor:
    """[P_0, scale * T, P_1 .. P_{76-N}, later chunks] for prompt_embeds (B, 77*k, C), tokens (1|B, N, C).

    ``scale`` may be a float or a tensor broadcastable to (B, 1, 1) (per-row scales).
    """
    chunk = family.chunk
    if prompt_embeds.ndim != 3 or tokens.ndim != 3:
        raise UniIDError(
            f"expected prompt embeddings (B, 77*k, C) and tokens (B, N, C), got {tuple(prompt_embeds.shape)} "
            f"and {tuple(tokens.shape)}"
        )
    batch, length, width = prompt_embeds.shape
    count = tokens.shape[1]
    if length < chunk or length % chunk:
        raise UniIDError(f"prompt embeddings must be whole {chunk}-token chunks, got length {length}")
    if tokens.shape[-1] != width:
        raise UniIDError(
            f"identity tokens are {tokens.shape[-1]} wide but the prompt embedding is {width} wide; "
            f"UniID needs an {family.title} base model (context width {family.context_dim})"
        )
    if tokens.shape[0] not in (1, batch):
        raise UniIDError(f"identity tokens batch {tokens.shape[0]} does not fit prompt batch {batch}")
    if count > chunk - 2:
        raise UniIDError(f"{count} identity tokens do not fit a {chunk}-token chunk")
    inserted = tokens.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
    if isinstance(scale, Tensor):
        factor = scale.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
        inserted = inserted * (factor.reshape(-1, 1, 1) if factor.ndim <= 1 else factor)
    elif scale != 1.0:
        inserted = inserted * scale
    inserted = inserted.expand(batch, -1, -1)
    parts = [prompt_embeds[:, :1], inserted, prompt_embeds[:, 1 : chunk - count]]
    if length > chunk:
        parts.append(prompt_embeds[:, chunk:])
    return torch.cat(parts, dim=1)


def prompt_token_count(ids: Sequence[int], family: BaseModelFamily = SDXL) -> int:
    """Real prompt tokens in a chunk's token ids: those after BOS, up to the first EOS (padding excluded)."""
    body = list(ids[1:]) if len(ids) and ids[0] == family.bos_id else list(ids)
    return body.index(family.eos_id) if family.eos_id in body else len(body)


def dropped_prompt_tokens(prompt_tokens: int, count: int, family: BaseModelFamily = SDXL) -> int:
    """How many of the first chunk's ``prompt_tokens`` real tokens the splice of ``count`` tokens drops.

    The chunk keeps BOS, the ``count`` identity tokens and its first ``chunk - 1 - count`` prompt rows;
    a non-zero result means the prompt's last words of that chunk lose their effect.
    """
    return max(0, prompt_tokens - (family.chunk - 1 - count))
