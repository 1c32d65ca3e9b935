"""Standalone UniID inference on diffusers SDXL: anchor-rescaled text, normalized adapter, merge schedule.

Built from StableDiffusionXLPipeline pieces (encode_prompt, scheduler, UNet, VAE) plus our attention
processor; the denoising loop is ours because the prompt embedding and adapter scale change at the
merge step. Never imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .anchor import AnchorCache, TextAnchor, load_names, transformers_tower
from .diffusers_processor import (
    UniIDAttnProcessor,
    install_uniid_processors,
    set_adapter_scale,
    set_rescaler,
    uniid_processors,
)
from .errors import UniIDError
from .face.class_word import substitute_class_word
from .identity import Identity, check_identity_matches, encode_identity
from .models.iresnet import FaceRecognitionNet
from .models.uniid import UniIDModel
from .rescaler import Rescaler
from .schedule import MergeSchedule
from .splice import splice_text_tokens

DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
_ANCHORS = AnchorCache()


@dataclass
class GenerationSettings:
    """Everything that decides an image besides the weights and the identity (official defaults)."""

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    height: int = 1024
    width: int = 1024
    seed: int = 0
    num_images: int = 1
    schedule: MergeSchedule = field(default_factory=MergeSchedule)
    rescale: str | Rescaler = "normalized"
    """A strategy name or a Rescaler (parameters and per-layer weights), as UniID Apply takes."""


class UniIDPipeline:
    """SDXL + UniID: encode faces into an Identity, then sample images conditioned on it."""

    def __init__(
        self, sdxl: Any, model: UniIDModel, face_net: FaceRecognitionNet, names: list[str] | None = None
    ):
        """Wrap a diffusers StableDiffusionXLPipeline; installs adapter processors when the model has them."""
        self.sdxl = sdxl
        self.model = model
        self.face_net = face_net
        self.names = names
        if model.adapter_branch is not None and not uniid_processors(sdxl.unet):
            install_uniid_processors(sdxl.unet, model, rescale="normalized")

    @classmethod
    def from_pretrained(
        cls,
        base: str,
        uniid: str,
        face_net: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        names: list[str] | None = None,
    ) -> UniIDPipeline:
        """Load a diffusers SDXL folder, a UniID weights file and the IResNet-100 face net."""
        from diffusers import StableDiffusionXLPipeline

        from .checkpoint import load_face_net, load_uniid

        sdxl = StableDiffusionXLPipeline.from_pretrained(base, dtype=dtype).to(device)
        sdxl.set_progress_bar_config(disable=True)
        model = load_uniid(uniid, dtype=dtype, device=device)
        net = load_face_net(face_net, dtype=dtype, device=device)
        return cls(sdxl, model, net, names)

    @property
    def device(self) -> torch.device:
        """Where the UNet runs."""
        return self.sdxl.unet.device

    def anchor(self) -> TextAnchor:
        """Per-token text norm anchor of this base model's text encoders (cached per weights)."""
        sdxl = self.sdxl
        towers = [
            transformers_tower(sdxl.text_encoder, sdxl.tokenizer, sdxl.tokenizer.pad_token_id),
            transformers_tower(sdxl.text_encoder_2, sdxl.tokenizer_2, sdxl.tokenizer_2.pad_token_id),
        ]
        names = self.names if self.names is not None else load_names()
        with torch.no_grad():
            return _ANCHORS.get(towers, names, self.model.config.num_text_tokens)

    def encode_identity(
        self, faces: Tensor, class_word: str = "person", combine: str = "mean_features"
    ) -> Identity:
        """Aligned faces (R,3,112,112) in [-1,1] -> Identity, text tokens anchor-rescaled when present."""
        identity = encode_identity(self.model, self.face_net, faces, class_word, combine)
        if identity.text_tokens is not None:
            identity = identity.with_anchor(self.anchor())
        return identity

    def _contexts(
        self, identity: Identity, settings: GenerationSettings
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(negative, positive-before, positive-after) contexts (B, 77[+M], C) and (2B, C2) pooled."""
        prompt = substitute_class_word(settings.prompt, identity.class_word)
        negative = substitute_class_word(settings.negative_prompt, identity.class_word)
        positive, negative_embeds, pooled, negative_pooled = self.sdxl.encode_prompt(
            prompt,
            device=self.device,
            num_images_per_prompt=settings.num_images,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
        )
        dtype = positive.dtype
        before, after = positive, positive
        if self.model.text_branch is not None:
            tokens = identity.text_tokens_for_prompt().to(self.device, dtype)
            before = splice_text_tokens(positive, tokens, settings.schedule.text_before)
            after = splice_text_tokens(positive, tokens, settings.schedule.text_after)
        if self.model.adapter_branch is not None:
            if identity.adapter_tokens is None:
                raise UniIDError(
                    "the identity has no adapter tokens; encode it with weights holding the adapter"
                )
            count = positive.shape[0]
            tokens = identity.adapter_tokens.to(self.device, dtype).expand(count, -1, -1)
            empty = self.model.negative_adapter_tokens().to(self.device, dtype).expand(count, -1, -1)
            before = torch.cat([before, tokens], dim=1)
            after = torch.cat([after, tokens], dim=1)
            negative_embeds = torch.cat([negative_embeds, empty], dim=1)
        return negative_embeds, before, after, torch.cat([negative_pooled, pooled])

    @torch.no_grad()
    def __call__(self, identity: Identity, settings: GenerationSettings, output_type: str = "pil") -> Any:
        """Sample settings.num_images images ('pil' list, or 'latent' tensor) for one identity, or for an
        identity batch of settings.num_images identities (image i gets identity i)."""
        sdxl, unet = self.sdxl, self.sdxl.unet
        check_identity_matches(identity, self.model)
        if identity.count not in (1, settings.num_images):
            raise UniIDError(
                f"the identity batch holds {identity.count} identities but {settings.num_images} image(s) "
                f"are asked for; use one identity, or set num_images to {identity.count} (image i gets "
                "identity i)"
            )
        negative, before, after, pooled = self._contexts(identity, settings)
        count = before.shape[0]
        time_ids = torch.tensor(
            [[settings.height, settings.width, 0, 0, settings.height, settings.width]],
            device=self.device,
            dtype=before.dtype,
        ).repeat(2 * count, 1)
        conditioning = {"text_embeds": pooled, "time_ids": time_ids}
        scheduler = sdxl.scheduler
        scheduler.set_timesteps(settings.num_inference_steps, device=self.device)
        # As the official inference.py: a generator on the pipeline's device, noise drawn there in the
        # UNet's dtype (diffusers' prepare_latents), so a seed gives the official noise on CPU and CUDA.
        generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        shape = (
            count,
            unet.config.in_channels,
            settings.height // sdxl.vae_scale_factor,
            settings.width // sdxl.vae_scale_factor,
        )
        latents = torch.randn(shape, generator=generator, device=self.device, dtype=before.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = sdxl.prepare_extra_step_kwargs(generator, 0.0)
        processors = uniid_processors(unet)
        saved = [(p.rescaler, p.layer_weight, p.scale) for p in processors]
        if processors:
            set_rescaler(unet, settings.rescale)
        try:
            for i, t in enumerate(scheduler.timesteps):
                is_before = settings.schedule.before_merge_at_step(i)
                if processors:
                    set_adapter_scale(unet, settings.schedule.adapter_scale(is_before))
                context = torch.cat([negative, before if is_before else after])
                sample = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                noise = unet(sample, t, encoder_hidden_states=context, added_cond_kwargs=conditioning).sample
                uncond, cond = noise.chunk(2)
                guided = uncond + settings.guidance_scale * (cond - uncond)
                latents = scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
        finally:
            _restore(processors, saved)
        if output_type == "latent":
            return latents
        return self.decode(latents)

    def decode(self, latents: Tensor) -> list[Any]:
        """VAE-decode latents to PIL images (the VAE runs in float32 when it must be upcast)."""
        vae = self.sdxl.vae
        original = vae.dtype
        upcast = original == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            scaled = latents.to(vae.dtype) / vae.config.scaling_factor
            image = vae.decode(scaled).sample
        finally:
            if upcast:
                vae.to(dtype=original)
        return self.sdxl.image_processor.postprocess(image.float(), output_type="pil")


def _restore(processors: list[UniIDAttnProcessor], saved: list[tuple[Rescaler, float, Any]]) -> None:
    """Put back each processor's rescaler, layer weight and scale (the trainer's UNet uses 'add' at 1)."""
    for processor, (rescaler, weight, scale) in zip(processors, saved, strict=True):
        processor.rescaler = rescaler
        processor.layer_weight = weight
        processor.scale = scale
