"""UniID text branch: N identity tokens per CLIP tower, spliced into the prompt after CLIP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..family import SDXL
from .iresnet import FaceFeatures
from .perceiver import FeedForward, PerceiverAttention


def stage_tokens(hidden_state: Tensor) -> Tensor:
    """Flatten a stage map ``(B, C, H, W)`` into ``(B, H*W, C)`` tokens (row-major positions)."""
    return hidden_state.flatten(2).transpose(1, 2)


class _MLPProj(nn.Module):
    """Linear -> GELU -> Linear under the official attribute name ``proj``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class TextResampler(nn.Module):
    """Perceiver that refines given queries against the deepest face map (49 tokens)."""

    def __init__(self, dim: int, face_dim: int = 512, depth: int = 4, dim_head: int = 64) -> None:
        super().__init__()
        self.proj_in = nn.Linear(face_dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, dim // dim_head), FeedForward(dim)])
            for _ in range(depth)
        )

    def forward(self, queries: Tensor, face_tokens: Tensor) -> Tensor:
        """Refine ``queries (B, N, dim)`` with ``face_tokens (B, S, face_dim)``."""
        context = self.proj_in(face_tokens)
        for attn, ff in self.layers:
            queries = attn(context, queries) + queries
            queries = ff(queries) + queries
        return self.norm_out(self.proj_out(queries))


class TextBranch(nn.Module):
    """Face embedding + H4 -> raw text tokens ``(B, N, sum(widths))`` = cat([T_L, T_G], -1)."""

    def __init__(
        self,
        num_tokens: int,
        widths: tuple[int, int] = SDXL.text_widths,
        face_dim: int = 512,
        depth: int = 4,
        dim_head: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != 2:
            raise ValueError(f"the text branch has exactly two towers, got widths {widths}")
        self.num_tokens = num_tokens
        self.widths = tuple(int(w) for w in widths)
        self.face_dim = face_dim
        self.depth = depth
        for k, width in enumerate(self.widths, start=1):
            self.add_module(f"proj_{k}", _MLPProj(face_dim, face_dim * 2, num_tokens * width))
            self.add_module(f"norm_{k}", nn.LayerNorm(width))
            self.add_module(f"text_resampler_{k}", TextResampler(width, face_dim, depth, dim_head))

    def towers(self, features: FaceFeatures) -> tuple[Tensor, Tensor]:
        """Raw tokens of each tower: ``(B, N, widths[0])`` and ``(B, N, widths[1])``."""
        face_tokens = stage_tokens(features.hidden_states[-1])
        outputs = []
        for k, width in enumerate(self.widths, start=1):
            queries = getattr(self, f"proj_{k}")(features.embedding).reshape(-1, self.num_tokens, width)
            queries = getattr(self, f"norm_{k}")(queries)
            outputs.append(getattr(self, f"text_resampler_{k}")(queries, face_tokens))
        return outputs[0], outputs[1]

    def forward(self, features: FaceFeatures) -> Tensor:
        """Raw (not anchor-rescaled) identity tokens, both towers concatenated on channels."""
        return torch.cat(self.towers(features), dim=-1)
