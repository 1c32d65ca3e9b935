"""UniID's parts under ComfyUI's model management: each part is a ModelPatcher that ComfyUI loads,
accounts for and offloads (the face encoders while a face is encoded, the ip projections while sampling).
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import torch
from torch import nn


class IPProjections(nn.Module):
    """The adapter's per-layer to_k_ip/to_v_ip weights, as a module ComfyUI can load and offload."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> None:
        super().__init__()
        self.to_k_ip = nn.ParameterList(
            nn.Parameter(k.detach().to(dtype), requires_grad=False) for k, _ in pairs
        )
        self.to_v_ip = nn.ParameterList(
            nn.Parameter(v.detach().to(dtype), requires_grad=False) for _, v in pairs
        )

    def widths(self) -> list[int]:
        """Output width of every layer's projection, in official index order."""
        return [int(w.shape[0]) for w in self.to_k_ip]


class EncoderModules(nn.Module):
    """The parts of a UniID model that turn face features into tokens, without the ip projections.

    It shares the model's modules and parameters, so ComfyUI moving it moves them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_branch = model.text_branch
        branch = model.adapter_branch
        if branch is not None:
            self.latents = branch.latents
            self.adapter_resampler = branch.adapter_resampler


def managed(module: nn.Module) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher that loads ``module`` to ComfyUI's torch device and offloads it like a UNet."""
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
