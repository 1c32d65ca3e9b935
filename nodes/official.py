"""The official script's sampling in ComfyUI: its sigmas (SIGMAS node, KSampler scheduler) and first noise."""

from __future__ import annotations

import logging
from functools import partial

import comfy.samplers
import torch
from comfy_api.v0_0_2 import io

from uniid_core.errors import UniIDError
from uniid_core.official_schedule import (
    OFFICIAL_SCHEDULERS,
    BetaSchedule,
    noise_prescale,
    official_noise,
    official_sigmas,
)

from .patch import compute_dtype
from .schema import CATEGORY, UniIDNode

LOG = logging.getLogger("UniID")
GENERATORS = ["cpu", "cuda"]
KSAMPLER_SCHEDULERS = {"uniid_official": "euler", "uniid_official_ddim": "ddim"}


def model_beta_schedule(model_sampling: object) -> BetaSchedule:
    """The model's scaled-linear beta schedule, read from its ModelSampling and checked against its sigmas."""
    start = getattr(model_sampling, "linear_start", None)
    end = getattr(model_sampling, "linear_end", None)
    table = getattr(model_sampling, "sigmas", None)
    if start is not None and end is not None and isinstance(table, torch.Tensor) and table.ndim == 1:
        schedule = BetaSchedule(beta_start=float(start), beta_end=float(end), num_train_timesteps=len(table))
        if schedule.describes(table):
            return schedule
    raise UniIDError(
        f"the model's noise schedule ({type(model_sampling).__name__}) is not the scaled-linear discrete "
        "schedule of SDXL that the official sampler uses (a zero-terminal-SNR, EDM or flow model, or a "
        "ModelSampling node changed it); connect the SDXL checkpoint's MODEL directly, or use BasicScheduler"
    )


def _ksampler_sigmas(model_sampling: object, steps: int, scheduler: str) -> torch.Tensor:
    """KSampler scheduler handler: the official sigmas for this model and step count."""
    return official_sigmas(steps, scheduler, model_beta_schedule(model_sampling))


def register_ksampler_schedulers() -> bool:
    """Offer the official schedules in KSampler's scheduler list through ComfyUI's own scheduler registry."""
    handlers = getattr(comfy.samplers, "SCHEDULER_HANDLERS", None)
    names = getattr(comfy.samplers, "SCHEDULER_NAMES", None)
    handler_type = getattr(comfy.samplers, "SchedulerHandler", None)
    if not isinstance(handlers, dict) or not isinstance(names, list) or handler_type is None:
        LOG.warning(
            "UniID: this ComfyUI has no scheduler registry, so KSampler does not list 'uniid_official'; "
            "use the UniID Official Schedule node with SamplerCustomAdvanced"
        )
        return False
    lists = [names]
    ksampler_list = getattr(comfy.samplers.KSampler, "SCHEDULERS", None)
    if isinstance(ksampler_list, list) and ksampler_list is not names:
        lists.append(ksampler_list)
    for name, scheduler in KSAMPLER_SCHEDULERS.items():
        handlers.setdefault(name, handler_type(partial(_ksampler_sigmas, scheduler=scheduler)))
        for choices in lists:
            if name not in choices:
                choices.append(name)
    return True


class UniIDOfficialSchedule(UniIDNode):
    """SIGMAS of the official sampler: diffusers' leading timesteps, steps_offset 1, float32."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDOfficialSchedule",
            display_name="UniID Official Schedule",
            category=CATEGORY,
            description="The official UniID script's sigmas (diffusers' leading spacing, steps_offset 1), "
            "bit-identical to diffusers'. Use with SamplerCustomAdvanced and UniID Official Noise.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The SDXL model; its beta schedule must be SDXL's scaled-linear one"
                ),
                io.Int.Input(
                    "steps",
                    default=30,
                    min=1,
                    max=1000,
                    tooltip="Sampling steps (official: 30); UniID Apply's merge_step counts them",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(OFFICIAL_SCHEDULERS),
                    tooltip="euler: SDXL base's EulerDiscrete (last sigma 0). ddim: the DDIM scheduler "
                    "RealVisXL V5.0 ships (last sigma 0.029, not 0); sample both with the euler sampler",
                ),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, model, steps: int, scheduler: str) -> io.NodeOutput:
        schedule = model_beta_schedule(model.get_model_object("model_sampling"))
        return io.NodeOutput(official_sigmas(steps, scheduler, schedule))


class OfficialNoise:
    """ComfyUI NOISE object: the official seeded noise, pre-scaled for ComfyUI's noise scaling."""

    def __init__(self, seed: int, device: str, dtype: torch.dtype, factor: float) -> None:
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.factor = factor

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        """Noise shaped like the latent, drawn in one call as diffusers does, on the CPU in its dtype."""
        latent = input_latent["samples"]
        noise = official_noise(latent.shape, self.seed, self.device, self.dtype)
        return (noise.to("cpu", torch.float64) * self.factor).to(latent.dtype)


class UniIDOfficialNoise(UniIDNode):
    """NOISE of the official script: seeded noise whose first latent is sqrt(1 + sigma_0^2) times it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDOfficialNoise",
            display_name="UniID Official Noise",
            category=CATEGORY,
            description="The official UniID script's first noise for SamplerCustomAdvanced: diffusers scales "
            "it by sqrt(1 + sigma_0^2) where ComfyUI uses sigma_0; this node makes up the difference.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The model being sampled: gives sigma_max and, for cuda, the noise dtype"
                ),
                io.Sigmas.Input(
                    "sigmas", tooltip="The sigmas the sampler will use (from UniID Official Schedule)"
                ),
                io.Int.Input(
                    "noise_seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the noise generator (the official script's seed)",
                ),
                io.Combo.Input(
                    "generator",
                    options=GENERATORS,
                    tooltip="cpu: float32 on the CPU (any machine; the values ComfyUI draws). cuda: a CUDA "
                    "generator in the model's dtype, as inference.py draws it (needs an NVIDIA GPU)",
                ),
            ],
            outputs=[io.Noise.Output(display_name="noise")],
        )

    @classmethod
    def execute(cls, model, sigmas: torch.Tensor, noise_seed: int, generator: str) -> io.NodeOutput:
        if generator not in GENERATORS:
            raise UniIDError(f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
        dtype = torch.float32
        if generator == "cuda":
            if not torch.cuda.is_available():
                raise UniIDError(
                    "UniID Official Noise: generator 'cuda' needs an NVIDIA GPU with CUDA torch, and none is "
                    "available; choose 'cpu' (the same noise ComfyUI draws, float32)"
                )
            dtype = compute_dtype(model.model)
        sigma_max = float(model.get_model_object("model_sampling").sigma_max)
        return io.NodeOutput(
            OfficialNoise(noise_seed, generator, dtype, noise_prescale(sigmas.cpu(), sigma_max))
        )
