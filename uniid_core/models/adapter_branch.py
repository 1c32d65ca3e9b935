"""UniID adapter branch: M identity tokens for decoupled cross-attention, plus per-layer K/V weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..family import SDXL
from .iresnet import FaceFeatures
from .perceiver import FeedForward, PerceiverAttention
from .text_branch import stage_tokens

MULTI_SCALE_SIZE = 16  # H1..H3 are resized to 16x16 (256 tokens)
MULTI_SCALE_DIM = 64 + 128 + 256
DEEP_DIM = 512


def multi_scale_tokens(features: FaceFeatures) -> Tensor:
    """H1..H3 resized bilinearly to 16x16 (align_corners=False), channel-concatenated: ``(B, 256, 448)``."""
    size = (MULTI_SCALE_SIZE, MULTI_SCALE_SIZE)
    maps = [
        F.interpolate(h, size=size, mode="bilinear", align_corners=False) for h in features.hidden_states[:3]
    ]
    return stage_tokens(torch.cat(maps, dim=1))


class ImageResampler(nn.Module):
    """Latents attend to the deep map (sub-layer 0), then the multi-scale maps (1), then an FFN."""

    def __init__(
        self,
        dim: int,
        output_dim: int,
        depth: int = 6,
        dim_head: int = 64,
        input_dims: tuple[int, int] = (MULTI_SCALE_DIM, DEEP_DIM),
    ) -> None:
        super().__init__()
        self.proj_face_recog_model_layers = nn.ModuleList(nn.Linear(d, dim) for d in input_dims)
        self.proj_out = nn.Linear(dim, output_dim)
        nn.init.zeros_(self.proj_out.weight)  # a fresh adapter starts as a no-op (official training init)
        nn.init.zeros_(self.proj_out.bias)
        self.norm_out = nn.LayerNorm(output_dim)
        heads = dim // dim_head
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                PerceiverAttention(dim, dim_head, heads),
                FeedForward(dim),
            ])
            for _ in range(depth)
        )

    def forward(self, latents: Tensor, multi_scale: Tensor, deep: Tensor) -> Tensor:
        """Resample ``latents (B, M, dim)`` from ``multi_scale (B, 256, 448)`` and ``deep (B, 49, 512)``."""
        proj_ms, proj_deep = self.proj_face_recog_model_layers
        contexts = (proj_deep(deep), proj_ms(multi_scale))
        for attn_deep, attn_ms, ff in self.layers:
            latents = attn_deep(contexts[0], latents) + latents
            latents = attn_ms(contexts[1], latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IPProjection(nn.Module):
    """The extra key/value projections of one UNet cross-attention layer."""

    def __init__(self, context_dim: int, width: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, width, bias=False)
        self.to_v_ip = nn.Linear(context_dim, width, bias=False)


class AdapterBranch(nn.Module):
    """Face stage maps -> adapter tokens ``(B, M, context_dim)``; owns every attn2 layer's to_k_ip/to_v_ip."""

    def __init__(
        self,
        num_tokens: int,
        hidden_dim: int,
        layer_widths: dict[int, int],
        context_dim: int = SDXL.context_dim,
        depth: int = 6,
        dim_head: int = 64,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.hidden_dim = hidden_dim
        self.context_dim = context_dim
        self.depth = depth
        self.layer_widths = {int(i): int(w) for i, w in sorted(layer_widths.items())}
        self.latents = nn.Parameter(torch.randn(1, num_tokens, hidden_dim) / hidden_dim**0.5)
        self.adapter_resampler = ImageResampler(hidden_dim, context_dim, depth, dim_head)
        self.adapter_modules = nn.ModuleDict(
            {str(i): IPProjection(context_dim, w) for i, w in self.layer_widths.items()}
        )

    def forward(self, features: FaceFeatures) -> Tensor:
        """Adapter tokens for a batch of face features (zero features give the negative tokens)."""
        deep = stage_tokens(features.hidden_states[-1])
        latents = self.latents.expand(deep.shape[0], -1, -1)
        return self.adapter_resampler(latents, multi_scale_tokens(features), deep)

    def ip_weights(self) -> list[tuple[Tensor, Tensor]]:
        """(to_k_ip.weight, to_v_ip.weight) per attn2 layer, ascending official index (diffusers order)."""
        return [(m.to_k_ip.weight, m.to_v_ip.weight) for m in self.adapter_modules.values()]
