"""Frozen SDXL pieces, the trainable UniID branch and the module that runs one training forward pass."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from training.config import TrainConfig
from uniid_core.cli import path_problem
from uniid_core.errors import CheckpointError, UniIDError
from uniid_core.family import diffusers_cross_attn, diffusers_layer_widths
from uniid_core.models.iresnet import FaceFeatures
from uniid_core.models.uniid import UniIDConfig, UniIDModel
from uniid_core.splice import splice_text_tokens

HUB_ID = re.compile(r"[\w-][\w.-]*/[\w.-]+")
"""A Hugging Face Hub repository id (org/name)."""


@dataclass
class BaseModels:
    """The SDXL components the trainer uses; all frozen."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    noise_scheduler: Any


def base_problem(base: str) -> str | None:
    """What is wrong with `base` as a local diffusers SDXL folder, or None (a Hub id such as
    org/name that is no local path is left to diffusers)."""
    if HUB_ID.fullmatch(base) and not os.path.exists(base):
        return None
    return path_problem("base", base, "folder", "unet/config.json", "a diffusers SDXL folder")


def load_base(base: str) -> BaseModels:
    """Load a diffusers SDXL folder (DDPM noise schedule from its scheduler config), frozen, eval mode.

    Only epsilon-prediction bases are accepted: the trainer's loss targets the noise.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    prediction = noise_scheduler.config.prediction_type
    if prediction != "epsilon":
        raise UniIDError(
            f"{base}: its scheduler sets prediction_type {prediction!r}; the trainer trains "
            "epsilon-prediction SDXL models (like stable-diffusion-xl-base-1.0): use such a base"
        )
    models = BaseModels(
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
        vae=AutoencoderKL.from_pretrained(base, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
        noise_scheduler=noise_scheduler,
    )
    for module in (models.unet, models.vae, models.text_encoder, models.text_encoder_2):
        module.requires_grad_(False)
        module.eval()
    return models


@torch.no_grad()
def encode_prompts(
    tokenizers: list[Any], encoders: list[Any], prompts: list[str], device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """SDXL prompt embeddings as diffusers' encode_prompt: (B,77,sum d) penultimate, (B,d2) pooled."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = encoder(ids.to(device), output_hidden_states=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


class PromptCache:
    """Per-class-word prompt embeddings, encoded once (the text encoders are frozen and prompts few)."""

    def __init__(self, template: str, base: BaseModels, class_words: list[str], device: torch.device) -> None:
        """Encode 'a photo of a <word>' for every class word of the dataset."""
        self.template = template
        prompts = [template.format(class_word=w) for w in class_words]
        tokenizers = [base.tokenizer, base.tokenizer_2]
        encoders = [base.text_encoder, base.text_encoder_2]
        embeds, pooled = encode_prompts(tokenizers, encoders, prompts, device)
        self.words = {w: i for i, w in enumerate(class_words)}
        self.embeds = embeds
        self.pooled = pooled

    def __call__(self, class_words: list[str]) -> tuple[Tensor, Tensor]:
        """(B,77,C) embeddings and (B,C2) pooled, each sample with its own class word."""
        try:
            rows = torch.tensor([self.words[w] for w in class_words], device=self.embeds.device)
        except KeyError as exc:
            raise UniIDError(
                f"class word {exc} was not pre-encoded; it is missing from the dataset index"
            ) from exc
        return self.embeds.index_select(0, rows), self.pooled.index_select(0, rows)


def time_ids(original_sizes: Tensor, resolution: int) -> Tensor:
    """SDXL micro-conditioning per sample: (orig H, orig W, crop top 0, crop left 0, target H, target W)."""
    batch = original_sizes.shape[0]
    zeros = torch.zeros(batch, 2, dtype=original_sizes.dtype, device=original_sizes.device)
    target = torch.full((batch, 2), resolution, dtype=original_sizes.dtype, device=original_sizes.device)
    return torch.cat([original_sizes, zeros, target], dim=1)


def draw_feature_dropout(
    batch: int, generator: torch.Generator, adapter_rate: float, text_rate: float, both_rate: float
) -> tuple[Tensor, Tensor]:
    """Per-sample keep masks (text, adapter): one uniform draw u; u < a drops the adapter's features,
    a <= u < a+t the text branch's, a+t <= u < a+t+b both."""
    u = torch.rand(batch, generator=generator)
    drop_adapter = u < adapter_rate
    drop_text = (u >= adapter_rate) & (u < adapter_rate + text_rate)
    drop_both = (u >= adapter_rate + text_rate) & (u < adapter_rate + text_rate + both_rate)
    return ~(drop_text | drop_both), ~(drop_adapter | drop_both)


def mask_features(features: FaceFeatures, keep: Tensor) -> FaceFeatures:
    """Zero the face features of the samples where keep is False (all-zero features = 'no face')."""
    keep = keep.to(features.embedding.device)

    def apply(t: Tensor) -> Tensor:
        return t * keep.view(-1, *([1] * (t.dim() - 1))).to(t.dtype)

    return FaceFeatures(apply(features.embedding), tuple(apply(h) for h in features.hidden_states))


def build_stage_model(cfg: TrainConfig, unet: nn.Module, text_encoders: Sequence[Any]) -> UniIDModel:
    """The model of one stage: only its branch, initialised like the official script (or from init_from).

    Its sizes come from the base model: the text towers' widths, the UNet's context width and its
    cross-attention layers.
    """
    text = cfg.stage == "text"
    if text:
        config = UniIDConfig(
            num_text_tokens=cfg.num_text_tokens,
            num_adapter_tokens=None,
            adapter_hidden_dim=None,
            text_widths=tuple(int(e.config.hidden_size) for e in text_encoders),
        )
    else:
        config = UniIDConfig(
            num_text_tokens=None,
            num_adapter_tokens=cfg.num_adapter_tokens,
            adapter_hidden_dim=cfg.adapter_hidden_dim,
            context_dim=int(unet.config.cross_attention_dim),
            layer_widths=diffusers_layer_widths(unet),
        )
    model = UniIDModel(config)
    if cfg.init_from:
        _load_branch(model, cfg.init_from, cfg.stage)
    elif not text:
        _init_adapter(model, unet)
    return model


def _init_adapter(model: UniIDModel, unet: nn.Module) -> None:
    """to_k_ip/to_v_ip copied from each attn2's to_k/to_v; the resampler's proj_out zero-initialised."""
    branch = model.adapter_branch
    with torch.no_grad():
        layers = diffusers_cross_attn(unet)
        for (k_ip, v_ip), (_, _, attn) in zip(branch.ip_weights(), layers, strict=True):
            k_ip.copy_(attn.to_k.weight)
            v_ip.copy_(attn.to_v.weight)
        nn.init.zeros_(branch.adapter_resampler.proj_out.weight)
        if branch.adapter_resampler.proj_out.bias is not None:
            nn.init.zeros_(branch.adapter_resampler.proj_out.bias)


def _load_branch(model: UniIDModel, path: str, stage: str) -> None:
    """Start from the trained branch of a UniID file (fine-tuning or continuing a finished run)."""
    from uniid_core.checkpoint import load_uniid

    source = load_uniid(path)
    name = "text_branch" if stage == "text" else "adapter_branch"
    branch = getattr(source, name)
    if branch is None:
        raise CheckpointError(f"{path} has no {name}; init_from needs a file holding the {stage} branch")
    getattr(model, name).load_state_dict(branch.state_dict())


class UniIDTrainingModule(nn.Module):
    """What DDP wraps: the trainable branch plus the frozen UNet; forward returns the noise prediction."""

    def __init__(self, uniid: UniIDModel, unet: nn.Module, stage: str) -> None:
        """Hold both modules (the UNet's processors already reference the adapter's to_k_ip/to_v_ip)."""
        super().__init__()
        self.uniid = uniid
        self.unet = unet
        self.stage = stage

    def forward(
        self,
        noisy: Tensor,
        timesteps: Tensor,
        prompt_embeds: Tensor,
        pooled: Tensor,
        add_time_ids: Tensor,
        features: FaceFeatures,
    ) -> Tensor:
        """Raw text tokens spliced after BOS (text stage) or adapter tokens appended (adapter stage)."""
        if self.stage == "text":
            tokens = self.uniid.text_branch(features)
            context = splice_text_tokens(prompt_embeds, tokens.to(prompt_embeds.dtype))
        else:
            tokens = self.uniid.adapter_branch(features)
            context = torch.cat([prompt_embeds, tokens.to(prompt_embeds.dtype)], dim=1)
        conditioning = {"text_embeds": pooled, "time_ids": add_time_ids}
        return self.unet(noisy, timesteps, context, added_cond_kwargs=conditioning).sample

    def trainable_branch(self) -> nn.Module:
        """The branch being trained."""
        return self.uniid.text_branch if self.stage == "text" else self.uniid.adapter_branch
