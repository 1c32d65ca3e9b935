"""Perceiver building blocks shared by both UniID branches (official parameter names)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PerceiverAttention(nn.Module):
    """Latent queries attend to ``cat(norm1(x), norm2(latents))``; no biases, softmax in float32."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int | None = None) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads if heads is not None else dim // dim_head
        inner = self.dim_head * self.heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: Tensor) -> Tensor:
        b, length, _ = t.shape
        return t.view(b, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """Update for ``latents (B, L, dim)`` given context ``x (B, S, dim)`` (residual added by caller)."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, length, _ = latents.shape
        q = self._split_heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        # Scaling q and k separately by dim_head ** -0.25 keeps half-precision logits in range.
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        logits = (q * scale) @ (k * scale).transpose(-2, -1)
        weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, length, -1)
        return self.to_out(out)


def FeedForward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm, Linear(dim, mult*dim), GELU, Linear(mult*dim, dim) at Sequential indices 0..3, no biases."""
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )
