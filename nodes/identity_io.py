"""Save and load identities as .safetensors (no pickle), so a face is reusable without the face models."""

from __future__ import annotations

import os
import re

from uniid_core.identity import load_identity, save_identity

from . import paths
from .loaders import CATEGORY


def _safe_name(name: str) -> str:
    """A file name without folders or odd characters, ending in .safetensors."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name.strip())) or "identity"
    stem = stem.removesuffix(".safetensors")
    return f"{stem}.safetensors"


class UniIDSaveIdentity:
    """Write an identity to identities/<name>.safetensors in the first configured uniid model folder."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "identity": ("UNIID_IDENTITY", {"tooltip": "The identity to keep"}),
                "name": (
                    "STRING",
                    {
                        "default": "identity",
                        "tooltip": "File name; saved in identities/ of the first uniid model folder "
                        "(models/uniid, or the first 'uniid:' folder of extra_model_paths.yaml)",
                    },
                ),
                "overwrite": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Replace an existing file of that name instead of adding a number",
                    },
                ),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = "Saves a UniID identity (tokens + class word + weights fingerprint) as .safetensors."

    def save(self, identity, name: str, overwrite: bool) -> dict:
        folder = paths.identity_dir()
        file_name = _safe_name(name)
        path = os.path.join(folder, file_name)
        counter = 1
        while os.path.exists(path) and not overwrite:
            path = os.path.join(folder, f"{file_name.removesuffix('.safetensors')}_{counter:03d}.safetensors")
            counter += 1
        save_identity(identity, path)
        return {"ui": {"text": [path]}, "result": (path,)}


class UniIDLoadIdentity:
    """Read an identity saved by UniID Save Identity (identities/ of any uniid folder, or input/)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "identity_file": (
                    paths.identity_choices(),
                    {
                        "tooltip": "Saved identity: identities/ of every uniid model folder, then ComfyUI's "
                        "input folder"
                    },
                ),
            }
        }

    RETURN_TYPES = ("UNIID_IDENTITY", "STRING")
    RETURN_NAMES = ("identity", "class_word")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a saved UniID identity."

    def load(self, identity_file: str) -> tuple:
        identity = load_identity(paths.resolve_identity(identity_file))
        return (identity, identity.class_word)
