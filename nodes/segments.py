"""Split sampling runs: which earlier run of an Apply a new run continues, so its step count goes on.

A run continues an earlier one only when it starts at the sigma that run stopped at (short of 0), adds
no noise (KSamplerAdvanced add_noise disable, DisableNoise) and starts from the latent that run
returned. Anything else (img2img, a KSampler with denoise < 1, a run from another latent) counts its own
steps. The latent is recognised by a fingerprint (shape and three sums, one position-weighted) read to
the host once at the end of a run that stops short and once at the start of a run whose first sigma
matches a recorded stop; other runs read nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SEGMENT_MEMORY = 16
MATCH_TOLERANCE = 1e-4
"""Relative to the latent's absolute sum: room for ComfyUI's latent scaling out and back in."""


@dataclass(frozen=True)
class Fingerprint:
    """Shape and sums of a latent: sum, absolute sum, sum weighted by position."""

    shape: tuple[int, ...]
    sums: tuple[float, float, float]

    def matches(self, other: Fingerprint) -> bool:
        """True for the same latent up to float rounding."""
        if self.shape != other.shape:
            return False
        scale = MATCH_TOLERANCE * max(self.sums[1], other.sums[1], 1e-12)
        return all(abs(a - b) <= scale for a, b in zip(self.sums, other.sums, strict=True))


def _sums(latent: torch.Tensor) -> torch.Tensor:
    """The three fingerprint sums as a device tensor (no host read)."""
    flat = latent.detach().reshape(-1).float()
    weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float32) / max(flat.numel(), 1)
    return torch.stack([flat.sum(), flat.abs().sum(), (flat * weights).sum()])


def fingerprint(latent: torch.Tensor) -> Fingerprint:
    """The fingerprint of a latent (one host read)."""
    return Fingerprint(tuple(latent.shape), tuple(_sums(latent).tolist()))


@dataclass(frozen=True)
class Segment:
    """A run that stopped short of sigma 0: where, after how many steps, and the latent it returned."""

    end_sigma: float
    steps: int
    latent: Fingerprint


class SegmentLog:
    """Where earlier runs of one Apply stopped short of sigma 0 (the last ``SEGMENT_MEMORY``)."""

    def __init__(self) -> None:
        self._segments: list[Segment] = []

    def steps_before(self, start_sigma: float, noise: torch.Tensor, latent: torch.Tensor | None) -> int:
        """Steps already run when a run starting at ``start_sigma`` from ``latent`` adds ``noise``: those of
        the recorded run it continues, else 0."""
        candidates = [s for s in self._segments if math.isclose(s.end_sigma, start_sigma, rel_tol=1e-5)]
        if not candidates or latent is None:
            return 0
        values = torch.cat([torch.count_nonzero(noise).reshape(1).float(), _sums(latent)]).tolist()
        if values[0]:
            return 0
        start = Fingerprint(tuple(latent.shape), tuple(values[1:]))
        for segment in reversed(candidates):
            if segment.latent.matches(start):
                return segment.steps
        return 0

    def record(self, end_sigma: float, steps: int, samples: torch.Tensor) -> None:
        """Remember a run that ended at ``end_sigma`` after ``steps`` steps of its schedule, returning
        ``samples``; a run that ends at sigma 0 leaves nothing to continue."""
        if end_sigma <= 0:
            return
        segment = Segment(end_sigma, steps, fingerprint(samples))
        kept = [
            s
            for s in self._segments
            if not (math.isclose(s.end_sigma, end_sigma, rel_tol=1e-5) and s.latent.matches(segment.latent))
        ]
        self._segments = (kept + [segment])[-SEGMENT_MEMORY:]
