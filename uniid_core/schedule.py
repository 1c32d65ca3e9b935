"""Merge schedule: identity scales before and after the merge step, by step index or by sigma.

Official rule: step i < merge_step uses the "before" scales, later steps the "after" scales;
merge_step <= 0 means "after" from the first step. By sigma (exact for samplers that call the model
several times per step): "before" means sigma > sample_sigmas[merge_step]; a merge step at or past the
last sigma keeps "before" for the whole run. Tensor inputs give tensor outputs with no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SIGMA_RTOL = 1e-5


@dataclass(frozen=True)
class MergeSchedule:
    """Text-token and adapter scales before/after ``merge_step`` (official defaults)."""

    merge_step: int = 5
    text_before: float = 0.5
    text_after: float = 1.8
    adapter_before: float = 0.8
    adapter_after: float = 1.2

    def before_merge_at_step(self, i: int) -> bool:
        """True while step ``i`` (0-based) comes before the merge step."""
        return self.merge_step > 0 and i < self.merge_step

    def before_merge_at_sigma(self, sigma: float | Tensor, sample_sigmas: Tensor) -> bool | Tensor:
        """True while sigma > sample_sigmas[merge_step] (relative tolerance 1e-5 for dtype rounding)."""
        if self.merge_step <= 0:
            return torch.zeros_like(sigma, dtype=torch.bool) if isinstance(sigma, Tensor) else False
        if self.merge_step >= len(sample_sigmas) - 1:
            return torch.ones_like(sigma, dtype=torch.bool) if isinstance(sigma, Tensor) else True
        threshold = sample_sigmas[self.merge_step]
        if isinstance(sigma, Tensor):
            threshold = torch.as_tensor(threshold).to(device=sigma.device, dtype=torch.float32)
            return sigma.to(torch.float32) > threshold * (1.0 + SIGMA_RTOL)
        return float(sigma) > float(threshold) * (1.0 + SIGMA_RTOL)

    def text_scale(self, before: bool | Tensor) -> float | Tensor:
        """Scale of the spliced text tokens for a before/after flag (tensor flag -> float32 tensor)."""
        return _pick(before, self.text_before, self.text_after)

    def adapter_scale(self, before: bool | Tensor) -> float | Tensor:
        """Adapter-attention scale for a before/after flag (tensor flag -> float32 tensor)."""
        return _pick(before, self.adapter_before, self.adapter_after)

    def text_scale_at_step(self, i: int) -> float:
        """Text-token scale at step ``i``."""
        return self.text_scale(self.before_merge_at_step(i))

    def adapter_scale_at_step(self, i: int) -> float:
        """Adapter scale at step ``i``."""
        return self.adapter_scale(self.before_merge_at_step(i))

    def text_scale_at_sigma(self, sigma: Tensor, sample_sigmas: Tensor) -> Tensor:
        """Text-token scale(s) for sigma(s) as a float32 tensor shaped like ``sigma``; no host sync."""
        return _pick(
            _as_flag(self.before_merge_at_sigma(sigma, sample_sigmas), sigma),
            self.text_before,
            self.text_after,
        )

    def adapter_scale_at_sigma(self, sigma: Tensor, sample_sigmas: Tensor) -> Tensor:
        """Adapter scale(s) for sigma(s) as a float32 tensor shaped like ``sigma``; no host sync."""
        return _pick(
            _as_flag(self.before_merge_at_sigma(sigma, sample_sigmas), sigma),
            self.adapter_before,
            self.adapter_after,
        )


def _as_flag(flag: bool | Tensor, like: float | Tensor) -> Tensor:
    if isinstance(flag, Tensor):
        return flag
    device = like.device if isinstance(like, Tensor) else None
    return torch.tensor(flag, device=device)


def _pick(before: bool | Tensor, when_before: float, when_after: float) -> float | Tensor:
    if isinstance(before, Tensor):
        return torch.where(before, when_before, when_after).to(torch.float32)
    return when_before if before else when_after
