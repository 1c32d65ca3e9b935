"""Base-model families UniID is trained for: every fact about the base model, in one place.

A family says how wide the prompt embedding and the text towers are, how its CLIP tokenizers frame a
77-token chunk, which cross-attention (attn2) layers its UNet has and in which order the official code
indexes them, which look-alike models are refused, and the shapes of its reference checkpoint. Models,
checkpoints, the splice, the anchor, the diffusers processor, the trainer and the ComfyUI nodes read
these facts from here; a new family (or an SDXL variant) is one more ``BaseModelFamily`` in
``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelFamilyError

BLOCK_ORDER = ("input", "output", "middle")
"""The order of UNet block kinds in diffusers' ``attn_processors`` (down blocks, up blocks, then the
middle block), written with ComfyUI's block names; the official layer index follows it. These are also
the block groups a rescaler's layer weights name."""
DIFFUSERS_BLOCKS = {"down_blocks": "input", "up_blocks": "output", "mid_block": "middle"}
"""diffusers' UNet block lists by the ComfyUI block kind they correspond to."""


@dataclass(frozen=True)
class CrossAttnLayer:
    """One attn2 layer: its official index, its ComfyUI replace key, its width and resolution level.

    ``index`` is the layer's position in diffusers' ``attn_processors`` (attn1 and attn2 of every
    transformer block alternate, so attn2 layers have the odd indices 1, 3, 5, ...); the adapter
    weights are keyed by it. ``level`` counts the 2x downsamplings between the latent and the layer.
    """

    index: int
    key: tuple[str, int, int]
    width: int
    level: int = 0

    @property
    def group(self) -> str:
        """The block group (input, output, middle) a rescaler's layer weights address it by."""
        return self.key[0]


@dataclass(frozen=True)
class AttnBlock:
    """A UNet block holding a transformer stack: ComfyUI block kind and number, depth, width, level."""

    kind: str
    number: int
    depth: int
    width: int
    level: int


def order_cross_attn(blocks: Iterable[AttnBlock]) -> list[CrossAttnLayer]:
    """Every attn2 layer of these blocks in the official (diffusers) order, with its official index."""
    ordered = sorted(blocks, key=lambda b: (BLOCK_ORDER.index(b.kind), b.number))
    keys = [(block, inner) for block in ordered for inner in range(block.depth)]
    return [
        CrossAttnLayer(2 * i + 1, (block.kind, block.number, inner), block.width, block.level)
        for i, (block, inner) in enumerate(keys)
    ]


def diffusers_cross_attn(unet: Any) -> list[tuple[int, str, Any]]:
    """(official index, module name, module) of every attn2 layer of a diffusers UNet, in official order."""
    return [
        (index, name.removesuffix(".processor"), unet.get_submodule(name.removesuffix(".processor")))
        for index, name in enumerate(unet.attn_processors)
        if name.endswith("attn2.processor")
    ]


def diffusers_block_group(name: str) -> str:
    """The block group (input, output, middle) of a diffusers module name, e.g. 'up_blocks.0...'."""
    top = name.split(".", 1)[0]
    if top not in DIFFUSERS_BLOCKS:
        raise ModelFamilyError(f"{name!r} is in none of the UNet's down, mid or up blocks")
    return DIFFUSERS_BLOCKS[top]


def diffusers_layer_widths(unet: Any) -> dict[int, int]:
    """Official attn2 index -> width (to_k output size) of every attn2 layer of a diffusers UNet."""
    widths = {index: int(module.to_k.out_features) for index, _, module in diffusers_cross_attn(unet)}
    if not widths:
        raise ModelFamilyError(
            "this UNet has no cross-attention (attn2) layers; UniID needs an SDXL-style UNet"
        )
    return widths


@dataclass(frozen=True)
class LookAlike:
    """A model that is not of the family but close to it, recognised by its prompt-embedding width."""

    context_dim: int
    name: str
    short: str


@dataclass(frozen=True)
class BaseModelFamily:
    """Everything UniID needs to know about one base-model family."""

    name: str
    title: str
    examples: str
    context_dim: int
    adm_channels: int
    text_widths: tuple[int, int]
    chunk: int
    bos_id: int
    eos_id: int
    pad_ids: tuple[int, int]
    attn_blocks: tuple[AttnBlock, ...]
    look_alikes: tuple[LookAlike, ...] = ()
    reference_unet: dict[str, Any] = field(default_factory=dict)
    reference_vae: dict[str, Any] = field(default_factory=dict)
    reference_text: tuple[dict[str, Any], ...] = ()
    """The reference checkpoint's diffusers/transformers configs (without what the fields above say),
    for the meta-device arithmetic of ``training.memory`` and the benchmarks' real-size preset."""

    @property
    def cross_attn_layers(self) -> list[CrossAttnLayer]:
        """The family's attn2 layers in official order."""
        return order_cross_attn(self.attn_blocks)

    def layer_widths(self) -> dict[int, int]:
        """Official attn2 index -> width (the adapter's to_k_ip/to_v_ip output sizes)."""
        return {layer.index: layer.width for layer in self.cross_attn_layers}

    def look_alike(self, context_dim: int | None) -> LookAlike | None:
        """The look-alike whose prompt embedding is ``context_dim`` wide, if any."""
        return next((other for other in self.look_alikes if other.context_dim == context_dim), None)

    def unet_config(self) -> dict[str, Any]:
        """The reference UNet's diffusers config (UNet2DConditionModel)."""
        return {
            **self.reference_unet,
            "cross_attention_dim": self.context_dim,
            "projection_class_embeddings_input_dim": self.adm_channels,
        }

    def text_configs(self) -> list[dict[str, Any]]:
        """The reference text towers' transformers configs (CLIPTextConfig keyword arguments)."""
        return [
            {
                **tower,
                "hidden_size": width,
                "projection_dim": width,
                "vocab_size": self.eos_id + 1,
                "max_position_embeddings": self.chunk,
            }
            for tower, width in zip(self.reference_text, self.text_widths, strict=True)
        ]


SD15 = LookAlike(768, "Stable Diffusion 1.x", "SD1.5")
SDXL_REFINER = LookAlike(1280, "the SDXL refiner", "SDXL refiner")

SDXL = BaseModelFamily(
    name="sdxl",
    title="SDXL",
    examples="SDXL base, RealVisXL, Juggernaut XL, ...",
    context_dim=2048,
    adm_channels=2816,
    text_widths=(768, 1280),
    chunk=77,
    bos_id=49406,
    eos_id=49407,
    pad_ids=(49407, 0),
    attn_blocks=(
        AttnBlock("input", 4, 2, 640, 1),
        AttnBlock("input", 5, 2, 640, 1),
        AttnBlock("input", 7, 10, 1280, 2),
        AttnBlock("input", 8, 10, 1280, 2),
        AttnBlock("middle", 0, 10, 1280, 2),
        AttnBlock("output", 0, 10, 1280, 2),
        AttnBlock("output", 1, 10, 1280, 2),
        AttnBlock("output", 2, 10, 1280, 2),
        AttnBlock("output", 3, 2, 640, 1),
        AttnBlock("output", 4, 2, 640, 1),
        AttnBlock("output", 5, 2, 640, 1),
    ),
    look_alikes=(SD15, SDXL_REFINER),
    # SDXL base 1.0's unet/vae/text_encoder/text_encoder_2 config.json files.
    reference_unet=dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        use_linear_projection=True,
    ),
    reference_vae=dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    ),
    reference_text=(
        dict(intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"),
        dict(intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu"),
    ),
)

FAMILIES: dict[str, BaseModelFamily] = {SDXL.name: SDXL}
"""Every known family by the name stored in UniID weights (``family`` in the single file's metadata)."""


def get_family(name: str) -> BaseModelFamily:
    """The family stored under ``name``; a clear error for weights of a family this version does not know."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelFamilyError(
            f"these UniID weights are for the base-model family {name!r}, which this version does not know "
            f"(known: {', '.join(FAMILIES)}); update the node pack"
        ) from None
