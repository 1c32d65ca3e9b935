"""The UniID model: optional text branch + optional adapter branch, with config and weight fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from ..errors import UniIDError
from ..family import SDXL
from .adapter_branch import AdapterBranch
from .iresnet import FaceFeatures
from .text_branch import TextBranch

FINGERPRINT_SAMPLES = 64  # values sampled per tensor; keeps hashing the 180M-parameter model in milliseconds
RELEASED_TEXT_TOKENS = 3
RELEASED_ADAPTER_TOKENS = 25
RELEASED_ADAPTER_HIDDEN_DIM = 768
"""Sizes of the official release (N text tokens, M adapter tokens, resampler width D); the trainer's
defaults."""


@dataclass
class UniIDConfig:
    """Sizes of a UniID model; a branch whose token count is None is absent."""

    num_text_tokens: int | None
    num_adapter_tokens: int | None
    adapter_hidden_dim: int | None
    text_widths: tuple[int, int] = SDXL.text_widths
    context_dim: int = SDXL.context_dim
    layer_widths: dict[int, int] = field(default_factory=dict)
    family: str = SDXL.name
    text_depth: int = 4
    adapter_depth: int = 6

    @classmethod
    def sdxl(
        cls,
        num_text_tokens: int | None = RELEASED_TEXT_TOKENS,
        num_adapter_tokens: int | None = RELEASED_ADAPTER_TOKENS,
    ) -> UniIDConfig:
        """The released configuration (N=3, M=25, D=768) for SDXL's 70 cross-attention layers."""
        return cls(
            num_text_tokens=num_text_tokens,
            num_adapter_tokens=num_adapter_tokens,
            adapter_hidden_dim=RELEASED_ADAPTER_HIDDEN_DIM if num_adapter_tokens else None,
            layer_widths=SDXL.layer_widths() if num_adapter_tokens else {},
        )

    def to_metadata(self) -> dict[str, str]:
        """String-valued description for safetensors metadata (strings as is, other fields as JSON)."""
        values = asdict(self)
        values["layer_widths"] = {str(k): v for k, v in sorted(self.layer_widths.items())}
        values["text_widths"] = list(self.text_widths)
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> UniIDConfig:
        """Inverse of ``to_metadata`` (unknown keys are ignored)."""
        fields = [k for k in cls.__dataclass_fields__ if k in metadata and k != "family"]
        raw = {k: json.loads(metadata[k]) for k in fields}
        raw["family"] = metadata.get("family", SDXL.name)
        if "text_widths" in raw:
            raw["text_widths"] = tuple(raw["text_widths"])
        if "layer_widths" in raw:
            raw["layer_widths"] = {int(k): int(v) for k, v in raw["layer_widths"].items()}
        for key in ("num_text_tokens", "num_adapter_tokens", "adapter_hidden_dim"):
            raw.setdefault(key, None)
        return cls(**raw)


def weights_fingerprint(state_dict: Mapping[str, Tensor]) -> str:
    """Short stable hash of names, shapes and a strided float32 sample of every tensor."""
    digest = hashlib.sha256()
    samples = []
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        samples.append(flat[::step][:FINGERPRINT_SAMPLES].float())
    if samples:
        digest.update(torch.cat([s.to(samples[0].device) for s in samples]).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class UniIDModel(nn.Module):
    """Both UniID branches (either may be absent), keyed ``text_branch.*`` / ``adapter_branch.*``."""

    def __init__(self, config: UniIDConfig, fingerprint: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.text_branch: TextBranch | None = None
        self.adapter_branch: AdapterBranch | None = None
        if config.num_text_tokens:
            self.text_branch = TextBranch(config.num_text_tokens, config.text_widths, depth=config.text_depth)
        if config.num_adapter_tokens:
            if not config.adapter_hidden_dim or not config.layer_widths:
                raise UniIDError("an adapter branch needs adapter_hidden_dim and layer_widths in its config")
            self.adapter_branch = AdapterBranch(
                config.num_adapter_tokens,
                config.adapter_hidden_dim,
                config.layer_widths,
                config.context_dim,
                config.adapter_depth,
            )
        self._negative_cache: dict[tuple, Tensor] = {}
        is_meta = any(p.is_meta for p in self.parameters())
        self.fingerprint = fingerprint or ("" if is_meta else weights_fingerprint(self.state_dict()))

    def refresh_fingerprint(self) -> str:
        """Recompute the fingerprint from the current weights (call after training changes them)."""
        self.fingerprint = weights_fingerprint(self.state_dict())
        self.clear_cache()
        return self.fingerprint

    def clear_cache(self) -> None:
        """Forget the cached negative adapter tokens (they are recomputed on the next request)."""
        self._negative_cache.clear()

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        return next(self.parameters()).dtype

    def forward(self, features: FaceFeatures) -> tuple[Tensor | None, Tensor | None]:
        """Raw text tokens and adapter tokens for ``features`` (None for an absent branch)."""
        text = self.text_branch(features) if self.text_branch is not None else None
        adapter = self.adapter_branch(features) if self.adapter_branch is not None else None
        return text, adapter

    def negative_adapter_tokens(self) -> Tensor:
        """Adapter tokens of all-zero features ``(1, M, context_dim)``, cached per device, dtype, weights."""
        branch = self.adapter_branch
        if branch is None:
            raise UniIDError("this UniID model has no adapter branch: load adapter weights to use it")
        latents = branch.latents
        version = None if latents.is_inference() else latents._version
        key = (latents.device, latents.dtype, latents.data_ptr(), version)
        cached = self._negative_cache.get(key)
        if cached is None:
            with torch.no_grad():
                cached = branch(FaceFeatures.zeros(1, latents.device, latents.dtype))
            self._negative_cache = {key: cached}
        return cached
