"""ComfyUI entry point of the UniID node pack: makes uniid_core importable and registers the nodes.

Outside ComfyUI (no ``folder_paths`` module, e.g. when pytest imports this file) it registers nothing.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./web"
"""Served by ComfyUI under /extensions/<pack>/; the frontend shows web/docs/<NodeName>.md as node help."""

if importlib.util.find_spec("folder_paths") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402, F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
