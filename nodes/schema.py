"""What every UniID node shares: its menu category and the check of its widget values.

ComfyUI 0.3.64 checks the inputs of a V3 node against their choices and ranges only in the frontend, so
a queued API prompt with a value a dropdown does not offer would run up to the node and fail there.
UniIDNode checks its own widget values when the prompt is validated, as ComfyUI did for the nodes
before the V3 schema: a choice that is not offered, or a number outside its range, refuses the prompt.
"""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

CATEGORY = "UniID"


def widget_problem(schema: io.Schema, values: dict[str, Any]) -> str | None:
    """Why a widget value does not fit its input (not among the choices, outside min/max), or None.

    Inputs fed by a link are not known yet at validation (None) and are not checked.
    """
    for spec in schema.inputs or ():
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, io.Combo.Input):
            if value not in spec.options:
                shown = spec.options if len(spec.options) <= 20 else f"{len(spec.options)} choices"
                return f"{spec.id}: {value!r} is not one of {shown}"
        elif isinstance(spec, io.Int.Input | io.Float.Input):
            if spec.min is not None and value < spec.min:
                return f"{spec.id}: {value} is below the minimum {spec.min}"
            if spec.max is not None and value > spec.max:
                return f"{spec.id}: {value} is above the maximum {spec.max}"
    return None


class UniIDNode(io.ComfyNode):
    """Base of the UniID nodes: a prompt is refused when one of their widget values does not fit."""

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool | str:
        """True, or what is wrong with a widget value (ComfyUI shows it on the node)."""
        problem = widget_problem(cls.define_schema(), values)
        return True if problem is None else problem
