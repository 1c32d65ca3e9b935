"""The rescaler slot in the graph: UniID Rescaler, UniID Rescaler Per Block and UniID Apply's rescaler input.

A UNIID_RESCALER carries a uniid_core.rescaler.Rescaler: a registered strategy, its parameter values and
per-layer weights. ComfyUI evaluates a V3 node's define_schema on every /object_info request and every
prompt validation, and the strategy lists here first register what imported modules declare in a
module-level ``UNIID_RESCALERS`` list; so a pack's strategies appear in the dropdowns whatever order
ComfyUI loaded the packs in.
"""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

from uniid_core.errors import UniIDError
from uniid_core.family import BLOCK_ORDER, SDXL
from uniid_core.rescaler import (
    ALL_LAYERS,
    LayerWeights,
    Rescaler,
    WeightRule,
    collect_declared,
    describe_positions,
    get_strategy,
    make_rescaler,
    parse_layer_weights,
    rescaler_names,
)

from .schema import CATEGORY, UniIDNode
from .sockets import UNIID_RESCALER

WEIGHT = {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05}
GROUP_INPUTS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
"""Per Block's weight widgets by the block group they set."""


def strategy_names() -> list[str]:
    """Every registered strategy, after registering those imported modules declare (official first)."""
    collect_declared()
    return rescaler_names()


def _strategies_with_params() -> str:
    described = [get_strategy(name).describe() for name in strategy_names() if get_strategy(name).params]
    return "; ".join(described) if described else "the registered strategies take none"


def rescaler_input() -> io.Input:
    """UniID Apply's optional rescaler input (any Apply node adds it last and passes it to
    ``chosen_rescaler``)."""
    return UNIID_RESCALER.Input(
        "rescaler",
        optional=True,
        tooltip="From UniID Rescaler or UniID Rescaler Per Block: when connected it replaces the rescale "
        "choice (strategy, its parameters and per-block weights)",
    )


def chosen_rescaler(rescale: str, rescaler: Rescaler | None = None) -> Rescaler:
    """The connected rescaler, or else the ``rescale`` dropdown's strategy with its default parameters."""
    if rescaler is not None:
        return rescaler
    collect_declared()
    return make_rescaler(rescale)


class UniIDRescaler(UniIDNode):
    """Pick a registered rescaling strategy and its parameters."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDRescaler",
            display_name="UniID Rescaler",
            category=CATEGORY,
            description="How UniID adds the identity attention to the text attention: a registered "
            "strategy with its parameters, for UniID Apply's rescaler input.",
            inputs=[
                io.Combo.Input(
                    "strategy",
                    options=strategy_names(),
                    tooltip="normalized (official: the identity attention scaled to the text attention's "
                    "norm), add (plain sum) or a strategy another pack registered",
                ),
                io.String.Input(
                    "params",
                    default="",
                    tooltip="The strategy's parameters as name=value, comma-separated (e.g. strength=0.7); "
                    f"empty = its defaults. Parameters: {_strategies_with_params()}",
                ),
            ],
            outputs=[UNIID_RESCALER.Output(display_name="rescaler")],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool | str:
        """Widget values fit, and the parameters are ones the strategy takes, in range."""
        checked = super().validate_inputs(**values)
        strategy, params = values.get("strategy"), values.get("params")
        if checked is not True or not isinstance(strategy, str) or not isinstance(params, str):
            return checked
        try:
            make_rescaler(strategy, params)
        except UniIDError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, strategy: str, params: str) -> io.NodeOutput:
        collect_declared()
        return io.NodeOutput(make_rescaler(strategy, params))


def _layers_tooltip() -> str:
    positions = describe_positions([layer.group for layer in SDXL.cross_attn_layers])
    return (
        "Further weights by layer, applied after the block weights (a later entry wins): "
        "'position:weight' or 'first-last:weight', or a block group ("
        f"{', '.join((*BLOCK_ORDER, ALL_LAYERS))}), comma-separated, e.g. '0-3:0.5, 60:0'. Layers are "
        f"numbered in the official order; on SDXL {positions}. Empty = none"
    )


class UniIDRescalerPerBlock(UniIDNode):
    """A rescaler whose identity weight differs per UNet block group or per attn2 layer."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        groups = {
            "input_blocks": "the down (input) blocks",
            "middle_block": "the middle block",
            "output_blocks": "the up (output) blocks",
        }
        return io.Schema(
            node_id="UniIDRescalerPerBlock",
            display_name="UniID Rescaler Per Block",
            category=CATEGORY,
            description="A rescaler (normalized unless one is connected) whose identity strength is "
            "multiplied by a weight per block group or per cross-attention layer.",
            inputs=[
                *(
                    io.Float.Input(
                        name,
                        **WEIGHT,
                        tooltip=f"Weight of the identity attention in {where} (1 = unchanged, 0 = none)",
                    )
                    for name, where in groups.items()
                ),
                io.String.Input("layers", default="", tooltip=_layers_tooltip()),
                UNIID_RESCALER.Input(
                    "rescaler",
                    optional=True,
                    tooltip="The strategy to weight (from UniID Rescaler; another Per Block multiplies its "
                    "weights); normalized, the official one, when not connected",
                ),
            ],
            outputs=[UNIID_RESCALER.Output(display_name="rescaler")],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool | str:
        """Widget values fit, and the layer spec reads."""
        checked = super().validate_inputs(**values)
        layers = values.get("layers")
        if checked is not True or not isinstance(layers, str):
            return checked
        try:
            parse_layer_weights(layers)
        except UniIDError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls,
        input_blocks: float,
        middle_block: float,
        output_blocks: float,
        layers: str,
        rescaler: Rescaler | None = None,
    ) -> io.NodeOutput:
        values = {"input_blocks": input_blocks, "middle_block": middle_block, "output_blocks": output_blocks}
        rules = tuple(WeightRule(GROUP_INPUTS[name], 0, 0, float(w)) for name, w in values.items())
        weights = LayerWeights(rules + parse_layer_weights(layers).rules)
        return io.NodeOutput((rescaler or Rescaler()).with_layer_weights(weights))
