"""The official schedule and first noise against diffusers' own schedulers and the golden tensors."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file

from uniid_core.official_schedule import (
    SDXL_SCHEDULE,
    BetaSchedule,
    init_noise_sigma,
    leading_timesteps,
    noise_prescale,
    official_noise,
    official_sigmas,
)

SDXL_CONFIG = dict(  # SDXL base's scheduler_config.json; RealVisXL V5.0 ships DDIM with the same fields
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    timestep_spacing="leading",
    steps_offset=1,
    prediction_type="epsilon",
)
STEP_COUNTS = [1, 4, 6, 7, 30, 50, 1000]


def euler(steps: int) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler(**SDXL_CONFIG)
    scheduler.set_timesteps(steps)
    return scheduler


def ddim(steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler(**SDXL_CONFIG, set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_euler_sigmas_and_timesteps_equal_diffusers_bit_for_bit(steps):
    reference = euler(steps)
    sigmas = official_sigmas(steps, "euler")
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert torch.equal(sigmas, reference.sigmas)
    assert torch.equal(leading_timesteps(steps).float(), reference.timesteps)
    assert torch.equal(init_noise_sigma(sigmas), reference.init_noise_sigma)


@pytest.mark.parametrize("steps", [s for s in STEP_COUNTS if s < 1000])
def test_ddim_sigmas_are_diffusers_ddim_alphas_in_sigma_space(steps):
    reference = ddim(steps)
    assert torch.equal(leading_timesteps(steps), reference.timesteps)
    alphas = torch.cat([reference.alphas_cumprod[reference.timesteps], reference.final_alpha_cumprod[None]])
    sigmas = official_sigmas(steps, "ddim")
    assert torch.equal(sigmas, ((1 - alphas) / alphas) ** 0.5)
    assert sigmas[-1] > 0.029 and torch.equal(sigmas[:-1], official_sigmas(steps, "euler")[:-1])


def _toy_eps(sample: torch.Tensor, timestep: int) -> torch.Tensor:
    """A smooth noise predictor of the (variance-preserving) sample and the timestep."""
    return torch.tanh(0.7 * sample) + 0.3 * torch.sin(sample * (1 + timestep / 500))


@pytest.mark.parametrize("steps", [6, 30])
def test_euler_on_ddim_sigmas_reproduces_diffusers_ddim_sampling(steps):
    """Deterministic DDIM = Euler in sigma space from sqrt(1 + sigma_0^2) * noise; the end differs by
    sqrt(alpha_cumprod[0]) (DDIM's variance-preserving output)."""
    reference = ddim(steps)
    noise = official_noise((1, 4, 8, 8), seed=3)
    sample = noise * reference.init_noise_sigma
    for t in reference.timesteps:
        sample = reference.step(_toy_eps(sample, int(t)), t, sample).prev_sample
    sigmas = official_sigmas(steps, "ddim")
    x = noise * init_noise_sigma(sigmas)
    for i, t in enumerate(leading_timesteps(steps)):
        eps = _toy_eps(x / (sigmas[i] ** 2 + 1) ** 0.5, int(t))
        x = x + eps * (sigmas[i + 1] - sigmas[i])
    torch.testing.assert_close(x / (sigmas[-1] ** 2 + 1) ** 0.5, sample, atol=2e-5, rtol=1e-5)
    assert (x - sample).abs().max() > 1e-4, "the last-sigma factor should be visible at this size"


@pytest.mark.parametrize("steps", [6, 30])
def test_euler_sampling_on_official_sigmas_matches_diffusers_euler(steps):
    reference = euler(steps)
    noise = official_noise((1, 4, 8, 8), seed=5)
    sample = noise * reference.init_noise_sigma
    for t in reference.timesteps:
        scaled = reference.scale_model_input(sample, t)
        sample = reference.step(_toy_eps(scaled, int(t)), t, sample).prev_sample
    sigmas = official_sigmas(steps, "euler")
    x = noise * init_noise_sigma(sigmas)
    for i, t in enumerate(leading_timesteps(steps)):
        eps = _toy_eps(x / (sigmas[i] ** 2 + 1) ** 0.5, int(t))
        x = x + eps * (sigmas[i + 1] - sigmas[i])
    torch.testing.assert_close(x, sample, atol=1e-5, rtol=1e-5)


def test_official_noise_is_diffusers_randn_tensor():
    generator = torch.Generator("cpu").manual_seed(42)
    reference = randn_tensor((2, 4, 8, 8), generator=generator, device=torch.device("cpu"))
    assert torch.equal(official_noise((2, 4, 8, 8), 42), reference)
    assert not torch.equal(official_noise((2, 4, 8, 8), 43), reference)


def test_noise_prescale_lands_on_init_noise_sigma():
    sigma_max = float(SDXL_SCHEDULE.train_sigmas()[-1])
    for steps in (4, 30):
        sigmas = official_sigmas(steps)
        factor = noise_prescale(sigmas, sigma_max)
        assert factor * float(sigmas[0]) == pytest.approx(float(init_noise_sigma(sigmas)), rel=1e-12)
        assert factor > 1.0
    at_max = torch.tensor([sigma_max * (1 + 5e-6), 1.0, 0.0])
    assert noise_prescale(at_max, sigma_max) == 1.0
    assert noise_prescale(torch.tensor([2 * sigma_max, 0.0]), sigma_max) == 1.0
    assert noise_prescale(torch.tensor([]), sigma_max) == 1.0
    # 1000 steps start at the table's end (timestep 1000 clamps to 999): the sampler scales it itself
    assert noise_prescale(official_sigmas(1000), sigma_max) == 1.0


def test_four_step_factor_is_the_three_percent_comfyui_misses():
    sigmas = official_sigmas(4)
    factor = noise_prescale(sigmas, float(SDXL_SCHEDULE.train_sigmas()[-1]))
    assert factor == pytest.approx(1.0291, abs=1e-4)


def test_beta_schedule_recognises_the_float64_table_and_rejects_others():
    def float64_table(start: float, end: float) -> torch.Tensor:
        betas = torch.linspace(start**0.5, end**0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        return (((1 - alphas) / alphas) ** 0.5).float()

    table = float64_table(0.00085, 0.012)
    assert not torch.equal(table, SDXL_SCHEDULE.train_sigmas()), "float64 and float32 tables differ in ulps"
    assert SDXL_SCHEDULE.describes(table)
    assert not SDXL_SCHEDULE.describes(float64_table(0.0001, 0.02))
    assert not SDXL_SCHEDULE.describes(table[:999])
    zero_snr = table.clone()
    zero_snr[-1] = 4000.0
    assert not SDXL_SCHEDULE.describes(zero_snr)
    other = BetaSchedule(beta_start=0.0001, beta_end=0.02)
    assert other.describes(float64_table(0.0001, 0.02))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="between 1 and 1000"):
        official_sigmas(0)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        official_sigmas(1001)
    with pytest.raises(ValueError, match="euler, ddim"):
        official_sigmas(30, "karras")


@pytest.mark.parametrize("case", [1, 2])
def test_golden_sigmas_timesteps_and_initial_latents(golden_dir, case):
    golden = load_file(str(golden_dir / f"golden_case{case}.safetensors"))
    sigmas = official_sigmas(len(golden["timesteps"]))
    assert torch.equal(sigmas, golden["sigmas"])
    assert torch.equal(leading_timesteps(len(golden["timesteps"])).float(), golden["timesteps"])
    first = official_noise(golden["initial_latents"].shape, seed=42) * init_noise_sigma(sigmas)
    assert torch.equal(first, golden["initial_latents"])
