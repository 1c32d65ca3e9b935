"""Check that a ComfyUI MODEL belongs to a base-model family and list its attn2 layers in official order.

The facts (widths, look-alikes, layer order) are the family's (uniid_core.family); this module only reads
them off ComfyUI's model objects.
"""

from __future__ import annotations

from uniid_core.errors import ModelFamilyError
from uniid_core.family import AttnBlock, BaseModelFamily, CrossAttnLayer, order_cross_attn


def _describe(base_model: object) -> str:
    """A short human name for a ComfyUI model object (class and config family)."""
    config = getattr(base_model, "model_config", None)
    family = type(config).__name__ if config is not None else "unknown"
    return f"{type(base_model).__name__} / {family}"


def check_family(model: object, family: BaseModelFamily) -> None:
    """Raise ModelFamilyError unless ``model`` (a ComfyUI ModelPatcher) holds a UNet of ``family``."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    unet_config = getattr(config, "unet_config", None) or {}
    diffusion = getattr(base, "diffusion_model", None)
    context_dim = unet_config.get("context_dim")
    adm = unet_config.get("adm_in_channels")
    is_unet = (
        diffusion is not None and hasattr(diffusion, "input_blocks") and hasattr(diffusion, "output_blocks")
    )
    if is_unet and context_dim == family.context_dim and adm == family.adm_channels:
        return
    hint = ""
    other = family.look_alike(context_dim)
    if is_unet and other is not None:
        hint = f" It looks like {other.name}, which UniID does not support."
    elif not is_unet:
        hint = " It is not a UNet (Flux, SD3 and other transformer models are not supported)."
    raise ModelFamilyError(
        f"UniID works only with {family.title} base models (cross-attention width {family.context_dim}, "
        f"ADM {family.adm_channels}); the connected MODEL is {_describe(base)} with "
        f"context_dim={context_dim}, adm_in_channels={adm}.{hint} Load an {family.title} checkpoint "
        f"({family.examples})."
    )


def _stack_depth(block: object) -> tuple[int, int]:
    """(transformer blocks, attn2 width) of the SpatialTransformer inside a UNet block, or (0, 0)."""
    for module in block.modules():
        blocks = getattr(module, "transformer_blocks", None)
        if blocks is not None and len(blocks) > 0 and hasattr(blocks[0], "attn2"):
            return len(blocks), int(blocks[0].attn2.to_k.weight.shape[0])
    return 0, 0


def _has(block: object, kind: str) -> bool:
    """True when a UNet block contains a module of class ``kind`` (Downsample / Upsample)."""
    return any(type(module).__name__ == kind for module in block.modules())


def cross_attn_layers(model: object) -> list[CrossAttnLayer]:
    """Every attn2 layer of a ComfyUI UNet (any depth and width) in the official order."""
    diffusion = model.model.diffusion_model
    blocks: list[AttnBlock] = []
    level = 0
    for number, block in enumerate(diffusion.input_blocks):
        depth, width = _stack_depth(block)
        blocks.append(AttnBlock("input", number, depth, width, level))
        level += _has(block, "Downsample")
    middle_level = level
    for number, block in enumerate(diffusion.output_blocks):
        depth, width = _stack_depth(block)
        blocks.append(AttnBlock("output", number, depth, width, level))
        level -= _has(block, "Upsample")
    if getattr(diffusion, "middle_block", None) is not None:
        depth, width = _stack_depth(diffusion.middle_block)
        blocks.append(AttnBlock("middle", 0, depth, width, middle_level))
    return order_cross_attn(block for block in blocks if block.depth)
