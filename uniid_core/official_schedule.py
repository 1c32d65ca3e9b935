"""The official pipeline's sigmas and first noise, computed as diffusers computes them.

The official ``inference.py`` samples with diffusers' ``EulerDiscreteScheduler`` (SDXL base) or the
``DDIMScheduler`` the RealVisXL V5.0 repository ships, both configured as SDXL's scheduler_config.json:
scaled-linear betas 0.00085..0.012 over 1000 training steps, "leading" timestep spacing, steps_offset 1;
the DDIM config keeps ``set_alpha_to_one`` false, so its last step ends at the first training sigma
instead of 0. Everything here is float32 as in diffusers (ComfyUI builds its sigma table in float64,
a few ulp away), so the sigmas equal diffusers' bit for bit.

Deterministic DDIM (eta 0) is the Euler step taken in sigma space: the same sigmas drive both, only the
final latent differs by the factor sqrt(alpha_cumprod[0]) = 0.99957 that DDIM's variance-preserving
output carries and a sigma-space sampler does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

OFFICIAL_SCHEDULERS = ("euler", "ddim")
SIGMA_MAX_RTOL = 1e-5


@dataclass(frozen=True)
class BetaSchedule:
    """A scaled-linear training noise schedule (SDXL's defaults) and diffusers' step offset."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    steps_offset: int = 1

    def alphas_cumprod(self) -> Tensor:
        """Cumulative products of 1 - beta, float32 as diffusers computes them."""
        betas = (
            torch.linspace(
                self.beta_start**0.5, self.beta_end**0.5, self.num_train_timesteps, dtype=torch.float32
            )
            ** 2
        )
        return torch.cumprod(1.0 - betas, dim=0)

    def train_sigmas(self) -> Tensor:
        """Sigma of every training timestep, sqrt((1 - a) / a), float32 (index = timestep)."""
        alphas_cumprod = self.alphas_cumprod()
        return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5

    def describes(self, sigma_table: Tensor, rtol: float = 1e-4) -> bool:
        """Whether a model's per-timestep sigma table is this schedule (to rounding): guards against
        zero-terminal-SNR or other schedules the official sigmas would not fit."""
        table = sigma_table.detach().to("cpu", torch.float64).flatten()
        ours = self.train_sigmas().to(torch.float64)
        return table.shape == ours.shape and bool(torch.allclose(table, ours, rtol=rtol, atol=0.0))


SDXL_SCHEDULE = BetaSchedule()


def leading_timesteps(steps: int, schedule: BetaSchedule = SDXL_SCHEDULE) -> Tensor:
    """diffusers' "leading" timesteps, highest first (4 steps: 751, 501, 251, 1), int64."""
    if not 1 <= steps <= schedule.num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {schedule.num_train_timesteps}, got {steps}")
    ratio = schedule.num_train_timesteps // steps
    return torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + schedule.steps_offset


def official_sigmas(steps: int, scheduler: str = "euler", schedule: BetaSchedule = SDXL_SCHEDULE) -> Tensor:
    """The official sampler's ``steps + 1`` sigmas, float32: "euler" ends at 0, "ddim" at the first
    training sigma (RealVisXL's DDIM config, set_alpha_to_one false).

    Leading timesteps are integers, where diffusers' linear interpolation of the table returns the
    table entry itself; a timestep past the table's end takes its last entry, as ``np.interp`` does.
    """
    if scheduler not in OFFICIAL_SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(OFFICIAL_SCHEDULERS)}, got {scheduler!r}")
    table = schedule.train_sigmas()
    index = leading_timesteps(steps, schedule).clamp(max=schedule.num_train_timesteps - 1)
    last = table[:1] if scheduler == "ddim" else torch.zeros(1, dtype=torch.float32)
    return torch.cat([table[index], last])


def init_noise_sigma(sigmas: Tensor) -> Tensor:
    """diffusers' first-noise scale for leading spacing, sqrt(1 + max(sigmas)^2), as a float32 scalar."""
    return (sigmas.max().to(torch.float32) ** 2 + 1) ** 0.5


def noise_prescale(sigmas: Tensor, sigma_max: float) -> float:
    """Factor for unit noise so that a sampler scaling it by sigma_0 ends at sqrt(1 + sigma_0^2).

    ComfyUI multiplies the noise by sigma_0, or already by sqrt(1 + sigma_0^2) when sigma_0 reaches the
    model's sigma_max (relative tolerance 1e-5): then the factor is 1.
    """
    if sigmas.numel() == 0:
        return 1.0
    first = float(sigmas[0])
    if first <= 0.0 or first > sigma_max or math.isclose(first, sigma_max, rel_tol=SIGMA_MAX_RTOL):
        return 1.0
    return float(init_noise_sigma(sigmas[:1])) / first


def official_noise(
    shape: Sequence[int], seed: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Unit Gaussian noise as diffusers' ``randn_tensor`` draws it: one seeded generator on ``device``
    (inference.py: ``cuda`` in the pipeline's float16), one call for the whole batch."""
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
