"""UniIDApplySimple: UniID Apply with the official schedule and one strength (UniID Apply's code path)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from uniid_core.rescaler import Rescaler

from .apply import OFFICIAL, apply_identity
from .rescaler import rescaler_input
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID, UNIID_IDENTITY, UniIDWeights

MAX_STRENGTH = 2.5
"""Strength 2.5 puts the largest official scale (text 1.8) at 4.5, inside UniID Apply's range (5)."""


def official_scales(strength: float) -> dict[str, float]:
    """UniID Apply's four scale inputs: the official schedule's scales times ``strength``."""
    return {
        "text_scale_before": OFFICIAL.text_before * strength,
        "text_scale_after": OFFICIAL.text_after * strength,
        "adapter_scale_before": OFFICIAL.adapter_before * strength,
        "adapter_scale_after": OFFICIAL.adapter_after * strength,
    }


class UniIDApplySimple(UniIDNode):
    """Apply a UniID identity with the official settings, made stronger or weaker by one number."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDApplySimple",
            display_name="UniID Apply (simple)",
            category=CATEGORY,
            description="Applies a UniID identity with the official schedule; strength scales it. UniID "
            "Apply has every control.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model"),
                io.Conditioning.Input(
                    "positive",
                    tooltip="Positive prompt conditioning (from UniID Text Encode); the identity's text "
                    "tokens go into it",
                ),
                UNIID.Input("uniid", tooltip="UniID weights (the same ones the identity was encoded with)"),
                UNIID_IDENTITY.Input("identity", tooltip="From UniID Encode Face or UniID Load Identity"),
                io.Clip.Input(
                    "clip",
                    tooltip="The SDXL checkpoint's CLIP: gives the norm anchor of the identity's text tokens",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=MAX_STRENGTH,
                    step=0.05,
                    tooltip="1.0 = the official schedule exactly (text 0.5 -> 1.8, adapter 0.8 -> 1.2, "
                    "merge at step 5); it multiplies all four scales. Lower = more room for the prompt, "
                    "higher = stronger likeness. 0 turns the identity fully off: model and conditioning "
                    "pass through unchanged",
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
        clip,
        strength: float,
        rescaler: Rescaler | None = None,
    ) -> io.NodeOutput:
        if strength == 0:
            return io.NodeOutput(model, positive)
        patched, spliced = apply_identity(
            model, positive, uniid, identity, clip=clip, rescaler=rescaler, **official_scales(strength)
        )
        return io.NodeOutput(patched, spliced)
