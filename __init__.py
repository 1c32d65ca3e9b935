"""ComfyUI entry point of the UniID node pack: makes uniid_core importable and exposes the V3 extension.

ComfyUI (0.3.64 and later) loads the pack through ``comfy_entrypoint`` (see nodes/__init__.py). Outside
ComfyUI (no ``folder_paths`` module, e.g. when pytest imports this file) it exposes nothing.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

WEB_DIRECTORY = "./web"
"""Served by ComfyUI under /extensions/<pack>/; the frontend shows web/docs/<NodeName>.md as node help."""

__all__ = ["WEB_DIRECTORY"]

if importlib.util.find_spec("folder_paths") is not None:
    from .nodes import comfy_entrypoint  # noqa: E402

    __all__ += ["comfy_entrypoint"]
