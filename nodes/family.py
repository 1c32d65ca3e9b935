"""Check that a ComfyUI MODEL is an SDXL UNet and list its cross-attention layers in UniID's order."""

from __future__ import annotations

from dataclasses import dataclass

from uniid_core.errors import ModelFamilyError

SDXL_CONTEXT_DIM = 2048
SDXL_ADM_CHANNELS = 2816


@dataclass(frozen=True)
class CrossAttnLayer:
    """One attn2 layer: its ComfyUI replace key, its width (attn2 inner dim) and resolution level.

    ``level`` counts the 2x downsamplings between the latent and the layer's token grid.
    """

    key: tuple[str, int, int]
    width: int
    level: int = 0


def _describe(base_model: object) -> str:
    """A short human name for a ComfyUI model object (class and config family)."""
    config = getattr(base_model, "model_config", None)
    family = type(config).__name__ if config is not None else "unknown"
    return f"{type(base_model).__name__} / {family}"


def check_sdxl(model: object) -> None:
    """Raise ModelFamilyError unless ``model`` (a ComfyUI ModelPatcher) holds an SDXL-family UNet."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    unet_config = getattr(config, "unet_config", None) or {}
    diffusion = getattr(base, "diffusion_model", None)
    context_dim = unet_config.get("context_dim")
    adm = unet_config.get("adm_in_channels")
    is_unet = (
        diffusion is not None and hasattr(diffusion, "input_blocks") and hasattr(diffusion, "output_blocks")
    )
    if is_unet and context_dim == SDXL_CONTEXT_DIM and adm == SDXL_ADM_CHANNELS:
        return
    hint = ""
    if is_unet and context_dim == 768:
        hint = " It looks like Stable Diffusion 1.x."
    elif is_unet and context_dim == 1280:
        hint = " It looks like the SDXL refiner, which UniID does not support."
    elif not is_unet:
        hint = " It is not a UNet (Flux, SD3 and other transformer models are not supported)."
    raise ModelFamilyError(
        f"UniID works only with SDXL base models (cross-attention width {SDXL_CONTEXT_DIM}, "
        f"ADM {SDXL_ADM_CHANNELS}); the connected MODEL is {_describe(base)} with context_dim={context_dim}, "
        f"adm_in_channels={adm}.{hint} Load an SDXL checkpoint (SDXL base, RealVisXL, Juggernaut XL, ...)."
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
    """Every attn2 layer of the UNet in diffusers ``attn_processors`` order (down, up, then mid)."""
    diffusion = model.model.diffusion_model
    layers: list[CrossAttnLayer] = []
    level = 0
    for number, block in enumerate(diffusion.input_blocks):
        depth, width = _stack_depth(block)
        layers += [CrossAttnLayer(("input", number, i), width, level) for i in range(depth)]
        level += _has(block, "Downsample")
    middle_level = level
    for number, block in enumerate(diffusion.output_blocks):
        depth, width = _stack_depth(block)
        layers += [CrossAttnLayer(("output", number, i), width, level) for i in range(depth)]
        level -= _has(block, "Upsample")
    if getattr(diffusion, "middle_block", None) is not None:
        depth, width = _stack_depth(diffusion.middle_block)
        layers += [CrossAttnLayer(("middle", 0, i), width, middle_level) for i in range(depth)]
    return layers
