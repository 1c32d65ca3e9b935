"""The objects that travel on UniID sockets: loaded weights, with ComfyUI-managed parts for each use.

ComfyUI's model management (ModelPatcher) loads, accounts for and offloads every part: the face
encoders (text branch, adapter resampler) while a face is encoded, the ip projections while sampling.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import torch
from torch import nn

from uniid_core.errors import UniIDError
from uniid_core.precision import DTYPES


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


@dataclass
class UniIDWeights:
    """A loaded UniID model, its face encoders' ModelPatcher and, per compute dtype, its ip projections'."""

    model: object
    source: str
    dtype_choice: str = "auto"
    _patchers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encoder_patcher(self) -> comfy.model_patcher.ModelPatcher:
        """ModelPatcher of the face encoders (both branches without the ip projections), made once."""
        with self._lock:
            patcher = self._patchers.get("encoders")
            if patcher is None:
                patcher = managed(EncoderModules(self.model))
                self._patchers["encoders"] = patcher
        return patcher

    @property
    def fingerprint(self) -> str:
        """The loaded weights' fingerprint (identities remember it)."""
        return self.model.fingerprint

    def ip_patcher(self, unet_dtype: torch.dtype) -> comfy.model_patcher.ModelPatcher:
        """ModelPatcher of the ip projections in the chosen dtype (or the UNet's for "auto"), cached."""
        branch = self.model.adapter_branch
        if branch is None:
            raise UniIDError(f"{self.source} holds no adapter branch; load weights that include adapter_ckpt")
        dtype = DTYPES.get(self.dtype_choice, unet_dtype)
        with self._lock:
            patcher = self._patchers.get(dtype)
            if patcher is None:
                patcher = managed(IPProjections(branch.ip_weights(), dtype))
                self._patchers[dtype] = patcher
        return patcher
