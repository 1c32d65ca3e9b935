"""UniIDApply: patch MODEL (70 attn2 layers) and splice the identity's text tokens into CONDITIONING."""

from __future__ import annotations

import logging

import torch

from uniid_core.anchor import load_names
from uniid_core.attention import RESCALERS
from uniid_core.errors import CheckpointError, UniIDError
from uniid_core.identity import check_identity_matches
from uniid_core.schedule import MergeSchedule
from uniid_core.splice import CHUNK, splice_text_tokens

from .anchor_clip import anchor_for_clip
from .bundle import UniIDWeights
from .family import check_sdxl, cross_attn_layers
from .loaders import CATEGORY
from .patch import UniIDPatchState, install
from .paths import names_choices, resolve_names

LOG = logging.getLogger("UniID")
PROMPT_TOKENS_KEY = "uniid_prompt_tokens"


def rescaler_choices() -> list[str]:
    """Registered adapter rescalers, the official "normalized" first."""
    names = sorted(RESCALERS)
    return (["normalized"] if "normalized" in names else []) + [n for n in names if n != "normalized"]


def _ranges(
    entry_start: float, entry_end: float, start: float, end: float
) -> tuple[tuple | None, list[tuple]]:
    """Split an entry's [start, end] percent range into the identity part and the untouched parts."""
    lo, hi = max(entry_start, start), min(entry_end, end)
    if lo >= hi:
        return None, [(entry_start, entry_end)]
    rest = [(entry_start, lo)] if entry_start < lo else []
    rest += [(hi, entry_end)] if hi < entry_end else []
    return (lo, hi), rest


def splice_conditioning(positive: list, tokens: torch.Tensor, start: float, end: float) -> list:
    """Insert the tokens into every entry's first 77-chunk, active in [start, end]; warn on lost words."""
    out = []
    for embeds, options in positive:
        first_start, first_end = options.get("start_percent", 0.0), options.get("end_percent", 1.0)
        active, rest = _ranges(first_start, first_end, start, end)
        if active is not None:
            _warn_dropped(embeds, options, tokens.shape[1])
            spliced = splice_text_tokens(embeds, tokens.to(embeds.dtype))
            extra = (
                {}
                if active == (first_start, first_end)
                else {"start_percent": active[0], "end_percent": active[1]}
            )
            out.append([spliced, {**options, **extra}])
        out += [[embeds, {**options, "start_percent": s, "end_percent": e}] for s, e in rest]
    return out


def _warn_dropped(embeds: torch.Tensor, options: dict, count: int) -> None:
    """Warn when the splice drops real prompt tokens (long first chunk) instead of padding."""
    used = options.get(PROMPT_TOKENS_KEY)
    if used is not None:
        lost = max(0, int(used) - (CHUNK - 1 - count))
    else:
        lost = count if embeds.shape[1] > CHUNK else 0
    if lost:
        LOG.warning(
            "UniID: the first 77-token chunk of the prompt is (nearly) full, so inserting %d identity tokens "
            "drops its last %d token(s); shorten the prompt's first part or put BREAK after ~70 tokens",
            count,
            lost,
        )


def _text_tokens(identity: object, clip: object | None, names_file: str = "official") -> torch.Tensor | None:
    """The anchor-rescaled text tokens (1, N, 2048), computing the anchor from CLIP when needed."""
    if getattr(identity, "text_tokens", None) is None:
        return None
    if clip is not None:
        names = load_names(resolve_names(names_file))
        identity = identity.with_anchor(anchor_for_clip(clip, identity.text_tokens.shape[1], names))
    elif getattr(identity, "text_tokens_rescaled", None) is None:
        raise UniIDError(
            "the identity's text tokens must be rescaled to the base model's text-encoder norms: connect the "
            "SDXL checkpoint's CLIP to UniID Apply's clip input"
        )
    return identity.text_tokens_for_prompt().detach().float().cpu()


def _compute_dtype(model: object) -> torch.dtype:
    """The dtype the UNet computes in (manual-cast dtype for fp8/low-precision weights)."""
    cast = getattr(model.model, "manual_cast_dtype", None)
    return cast if cast is not None else model.model_dtype()


class UniIDApply:
    """Apply a UniID identity to an SDXL MODEL and its positive CONDITIONING."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        scale = {"min": 0.0, "max": 5.0, "step": 0.05}
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SDXL model"}),
                "positive": (
                    "CONDITIONING",
                    {
                        "tooltip": "Positive prompt conditioning; the identity's text "
                        "tokens go into its first 77 tokens"
                    },
                ),
                "uniid": (
                    "UNIID",
                    {"tooltip": "UniID weights (the same ones the identity was encoded with)"},
                ),
                "identity": ("UNIID_IDENTITY", {"tooltip": "From UniID Encode Face or UniID Load Identity"}),
                "merge_step": (
                    "INT",
                    {
                        "default": 5,
                        "min": 0,
                        "max": 1000,
                        "tooltip": "Sampling step from which the 'after' scales apply (0 = from "
                        "the start); counted on the sampler's sigmas",
                    },
                ),
                "text_scale_before": (
                    "FLOAT",
                    {"default": 0.5, **scale, "tooltip": "Text-token scale before the merge step"},
                ),
                "text_scale_after": (
                    "FLOAT",
                    {"default": 1.8, **scale, "tooltip": "Text-token scale from the merge step on"},
                ),
                "adapter_scale_before": (
                    "FLOAT",
                    {"default": 0.8, **scale, "tooltip": "Adapter-attention scale before the merge step"},
                ),
                "adapter_scale_after": (
                    "FLOAT",
                    {"default": 1.2, **scale, "tooltip": "Adapter-attention scale from the merge step on"},
                ),
                "rescale": (
                    rescaler_choices(),
                    {
                        "tooltip": "How the adapter attention is added: normalized (official, scaled to the "
                        "text attention's norm), add (plain sum) or a registered strategy"
                    },
                ),
                "start_percent": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "Fraction of sampling where the identity starts",
                    },
                ),
                "end_percent": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.001,
                        "tooltip": "Fraction of sampling where the identity stops",
                    },
                ),
            },
            "optional": {
                "clip": (
                    "CLIP",
                    {
                        "tooltip": "The SDXL checkpoint's CLIP: gives the norm anchor of the text "
                        "tokens (needed unless the identity already carries it)"
                    },
                ),
                "mask": (
                    "MASK",
                    {"tooltip": "Apply the adapter only inside this mask (e.g. one person of two)"},
                ),
                "names_file": (
                    names_choices(),
                    {
                        "default": "official",
                        "tooltip": "Celebrity names the text-token norm anchor is computed from: official "
                        "(wiki_names_v2.txt, as the official code), uniid_project, or your own list in "
                        "models/uniid/names/ (one name per line)",
                    },
                ),
            },
        }

    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "positive")
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Applies a UniID identity: adapter attention in all 70 SDXL cross-attention layers plus "
        "identity tokens in the prompt, with the official merge schedule."
    )

    def apply(
        self,
        model,
        positive,
        uniid: UniIDWeights,
        identity,
        merge_step: int,
        text_scale_before: float,
        text_scale_after: float,
        adapter_scale_before: float,
        adapter_scale_after: float,
        rescale: str,
        start_percent: float,
        end_percent: float,
        clip=None,
        mask=None,
        names_file: str = "official",
    ) -> tuple:
        check_sdxl(model)
        check_identity_matches(identity, uniid.model)
        schedule = MergeSchedule(
            merge_step, text_scale_before, text_scale_after, adapter_scale_before, adapter_scale_after
        )
        text_tokens = _text_tokens(identity, clip, names_file)
        adapter_tokens = getattr(identity, "adapter_tokens", None)
        layers, ip_patcher, negative = cross_attn_layers(model), None, None
        if adapter_tokens is not None:
            ip_patcher = uniid.ip_patcher(_compute_dtype(model))
            _check_layers(layers, ip_patcher.model.widths(), uniid.source)
            negative = uniid.model.negative_adapter_tokens().detach().float().cpu()
            adapter_tokens = adapter_tokens.detach().float().cpu()
        sampling = model.get_model_object("model_sampling")
        state = UniIDPatchState(
            adapter_tokens=adapter_tokens,
            negative_tokens=negative,
            text_tokens=text_tokens,
            ip_patcher=ip_patcher,
            schedule=schedule,
            rescale=rescale,
            sigma_start=float(sampling.percent_to_sigma(start_percent)),
            sigma_end=float(sampling.percent_to_sigma(end_percent)),
            mask=mask,
        )
        patched = model.clone()
        install(patched, state, layers)
        conditioning = positive
        if text_tokens is not None:
            conditioning = splice_conditioning(positive, text_tokens, start_percent, end_percent)
        return (patched, conditioning)


def _check_layers(layers: list, widths: list[int], source: str) -> None:
    """The adapter must have one ip projection per UNet attn2 layer, of the same widths, in the same order."""
    unet_widths = [layer.width for layer in layers]
    if unet_widths != widths:
        raise CheckpointError(
            f"the UniID adapter in {source} has {len(widths)} cross-attention projections but this UNet has "
            f"{len(unet_widths)} cross-attention layers (or other widths); the weights were trained for "
            "another UNet layout (UniID needs SDXL)"
        )
