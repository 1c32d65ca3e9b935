"""UniIDApply: patch MODEL (70 attn2 layers) and splice the identity's text tokens into CONDITIONING."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from uniid_core.anchor import load_names
from uniid_core.errors import CheckpointError, IdentityMismatchError, UniIDError
from uniid_core.family import get_family
from uniid_core.identity import check_identity_matches
from uniid_core.rescaler import BUILTIN_RESCALERS, Rescaler
from uniid_core.schedule import MergeSchedule

from .anchor_clip import anchor_for_clip
from .base_model import check_family, cross_attn_layers
from .conditioning import splice_conditioning
from .patch import UniIDState, compute_dtype, install_patch
from .paths import names_choices, resolve_names
from .rescaler import chosen_rescaler, rescaler_input, strategy_names
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID, UNIID_IDENTITY, UniIDWeights

MERGE_AT = ["step", "percent"]
OFFICIAL = MergeSchedule()
"""The official merge schedule (merge step 5, text 0.5 -> 1.8, adapter 0.8 -> 1.2)."""


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


class UniIDApply(UniIDNode):
    """Apply a UniID identity to an SDXL MODEL and its positive CONDITIONING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        scale = {"min": 0.0, "max": 5.0, "step": 0.05}
        percent = {"min": 0.0, "max": 1.0, "step": 0.001}
        return io.Schema(
            node_id="UniIDApply",
            display_name="UniID Apply",
            category=CATEGORY,
            description="Applies a UniID identity: adapter attention in all 70 SDXL cross-attention layers "
            "plus identity tokens in the prompt, with the official merge schedule.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model"),
                io.Conditioning.Input(
                    "positive",
                    tooltip="Positive prompt conditioning; the identity's text tokens go into its first 77 "
                    "tokens",
                ),
                UNIID.Input("uniid", tooltip="UniID weights (the same ones the identity was encoded with)"),
                UNIID_IDENTITY.Input(
                    "identity",
                    tooltip="From UniID Encode Face or UniID Load Identity; an identity batch (UniID "
                    "Identity Batch, Encode Face's per_image) gives identity i to latent i",
                ),
                io.Int.Input(
                    "merge_step",
                    default=OFFICIAL.merge_step,
                    min=0,
                    max=1000,
                    tooltip="Sampling step from which the 'after' scales apply (0 = from the start). Every "
                    "model call of a step uses that step's scales; a run that continues an earlier one "
                    "(KSamplerAdvanced start_at_step, SplitSigmas) continues its count. img2img "
                    "(denoise < 1) counts the steps it runs. A run continues another only when it adds no "
                    "noise (add_noise disable, DisableNoise) and starts from the latent that run returned",
                ),
                io.Float.Input(
                    "text_scale_before",
                    default=OFFICIAL.text_before,
                    **scale,
                    tooltip="Text-token scale before the merge step",
                ),
                io.Float.Input(
                    "text_scale_after",
                    default=OFFICIAL.text_after,
                    **scale,
                    tooltip="Text-token scale from the merge step on",
                ),
                io.Float.Input(
                    "adapter_scale_before",
                    default=OFFICIAL.adapter_before,
                    **scale,
                    tooltip="Adapter-attention scale before the merge step",
                ),
                io.Float.Input(
                    "adapter_scale_after",
                    default=OFFICIAL.adapter_after,
                    **scale,
                    tooltip="Adapter-attention scale from the merge step on",
                ),
                io.Combo.Input(
                    "rescale",
                    options=strategy_names(),
                    tooltip="How the adapter attention is added: normalized (official, scaled to the text "
                    "attention's norm), add (plain sum) or a registered strategy",
                ),
                io.Float.Input(
                    "start_percent",
                    default=0.0,
                    **percent,
                    tooltip="Fraction of sampling where the identity starts",
                ),
                io.Float.Input(
                    "end_percent",
                    default=1.0,
                    **percent,
                    tooltip="Fraction of sampling where the identity stops",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="The SDXL checkpoint's CLIP: gives the norm anchor of the text tokens (needed "
                    "unless the identity already carries it)",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Apply the adapter only inside this mask (e.g. one person of two)",
                ),
                io.Combo.Input(
                    "names_file",
                    options=names_choices(),
                    default="official",
                    optional=True,
                    tooltip="Celebrity names the text-token norm anchor is computed from: official "
                    "(wiki_names_v2.txt, as the official code), uniid_project, or your own list in "
                    "models/uniid/names/ (one name per line)",
                ),
                io.Combo.Input(
                    "merge_at",
                    options=MERGE_AT,
                    default="step",
                    optional=True,
                    tooltip="Where the 'after' scales start: at merge_step (official), or at the noise level "
                    "merge_percent, which stays put for split runs whose first part used another model or "
                    "does not reach the merge point, and for img2img",
                ),
                io.Float.Input(
                    "merge_percent",
                    default=0.17,
                    **percent,
                    optional=True,
                    tooltip="With merge_at = percent: the noise level (ComfyUI percent, as in start_percent) "
                    "from which the 'after' scales apply; 0.17 is about step 5 of 30 with the normal "
                    "scheduler",
                ),
                UNIID_IDENTITY.Input(
                    "negative_identity",
                    optional=True,
                    tooltip="A face to steer away from (a look-alike, an expression or lighting to avoid): "
                    "its adapter tokens replace the zero-face tokens on every row that is not this "
                    "Apply's positive (the negative prompt's). Not connected = the official zero-face "
                    "negative",
                ),
                rescaler_input(),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive")],
        )

    @classmethod
    def execute(
        cls,
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
        merge_at: str = "step",
        merge_percent: float = 0.17,
        negative_identity=None,
        rescaler: Rescaler | None = None,
    ) -> io.NodeOutput:
        patched, spliced = apply_identity(
            model,
            positive,
            uniid,
            identity,
            merge_step=merge_step,
            text_scale_before=text_scale_before,
            text_scale_after=text_scale_after,
            adapter_scale_before=adapter_scale_before,
            adapter_scale_after=adapter_scale_after,
            rescale=rescale,
            start_percent=start_percent,
            end_percent=end_percent,
            clip=clip,
            mask=mask,
            names_file=names_file,
            merge_at=merge_at,
            merge_percent=merge_percent,
            negative_identity=negative_identity,
            rescaler=rescaler,
        )
        return io.NodeOutput(patched, spliced)


def apply_identity(
    model,
    positive,
    uniid: UniIDWeights,
    identity,
    *,
    merge_step: int = OFFICIAL.merge_step,
    text_scale_before: float = OFFICIAL.text_before,
    text_scale_after: float = OFFICIAL.text_after,
    adapter_scale_before: float = OFFICIAL.adapter_before,
    adapter_scale_after: float = OFFICIAL.adapter_after,
    rescale: str = BUILTIN_RESCALERS[0],
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    clip=None,
    mask=None,
    names_file: str = "official",
    merge_at: str = "step",
    merge_percent: float = 0.17,
    negative_identity=None,
    rescaler: Rescaler | None = None,
) -> tuple[object, list]:
    """The one implementation behind UniID Apply and UniID Apply (simple): a patched clone of ``model`` and
    ``positive`` with the identity's text tokens spliced in. Defaults are the official settings."""
    family = get_family(uniid.model.config.family)
    check_family(model, family)
    check_identity_matches(identity, uniid.model)
    if negative_identity is not None:
        try:
            check_identity_matches(negative_identity, uniid.model)
        except IdentityMismatchError as exc:
            raise IdentityMismatchError(f"negative_identity: {exc}") from exc
    if merge_at not in MERGE_AT:
        raise UniIDError(f"merge_at must be one of {MERGE_AT}, got {merge_at!r}")
    sampling = model.get_model_object("model_sampling")
    merge_sigma = float(sampling.percent_to_sigma(merge_percent)) if merge_at == "percent" else None
    schedule = MergeSchedule(
        merge_step,
        text_scale_before,
        text_scale_after,
        adapter_scale_before,
        adapter_scale_after,
        merge_sigma,
    )
    text_tokens = _text_tokens(identity, clip, names_file)
    layers = cross_attn_layers(model)
    token_sets, ip_patcher = _token_sets(identity, uniid, negative_identity), None
    if token_sets is not None:
        ip_patcher = uniid.ip_patcher(compute_dtype(model.model))
        _check_layers(layers, ip_patcher.model.widths(), uniid.source)
    state = UniIDState(
        token_sets=token_sets,
        ip_patcher=ip_patcher,
        schedule=schedule,
        rescaler=chosen_rescaler(rescale, rescaler),
        sigma_start=float(sampling.percent_to_sigma(start_percent)),
        sigma_end=float(sampling.percent_to_sigma(end_percent)),
        levels=[layer.level for layer in layers],
        mask=mask,
        identities=identity.count,
        negatives=1 if negative_identity is None else negative_identity.count,
    )
    patched = model.clone()
    install_patch(patched, state, layers)
    spliced = splice_conditioning(positive, text_tokens, start_percent, end_percent, state.tag, family)
    return patched, spliced


def _token_sets(
    identity: object, uniid: UniIDWeights, negative_identity: object = None
) -> torch.Tensor | None:
    """The adapter token sets rows pick from by index, stacked (S, M, 2048): first the identity's (one per
    latent for an identity batch), then the negative rows' (the zero-face features, the official
    negative, or the negative identity's). None when the identity has no adapter tokens.
    """
    adapter_tokens = getattr(identity, "adapter_tokens", None)
    if adapter_tokens is None:
        if negative_identity is not None:
            raise UniIDError(
                "negative_identity acts through the adapter branch, and the identity (or "
                f"{uniid.source}) has no adapter tokens; load UniID weights that include the adapter branch"
            )
        return None
    if negative_identity is None:
        negative = uniid.model.negative_adapter_tokens()[:1]
    else:
        negative = negative_identity.adapter_tokens
    return torch.cat([adapter_tokens.detach().float().cpu(), negative.detach().float().cpu()], 0)


def _check_layers(layers: list, widths: list[int], source: str) -> None:
    """The adapter must have one ip projection per UNet attn2 layer, of the same widths, in the same order."""
    unet_widths = [layer.width for layer in layers]
    if unet_widths != widths:
        raise CheckpointError(
            f"the UniID adapter in {source} has {len(widths)} cross-attention projections but this UNet has "
            f"{len(unet_widths)} cross-attention layers (or other widths); the weights were trained for "
            "another UNet layout (UniID needs the base-model family the weights were trained for)"
        )
