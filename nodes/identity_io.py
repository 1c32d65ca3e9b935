"""Save and load identities as .safetensors (no pickle), so a face is reusable without the face models."""

from __future__ import annotations

import os
import re

from comfy_api.v0_0_2 import io, ui

from uniid_core.identity import load_identity, save_identity

from . import paths
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID_IDENTITY


def _safe_name(name: str) -> str:
    """A file name without folders or odd characters, ending in .safetensors."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name.strip())) or "identity"
    stem = stem.removesuffix(".safetensors")
    return f"{stem}.safetensors"


class UniIDSaveIdentity(UniIDNode):
    """Write an identity to identities/<name>.safetensors in the first configured uniid model folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDSaveIdentity",
            display_name="UniID Save Identity",
            category=CATEGORY,
            description="Saves a UniID identity (tokens + class word + weights fingerprint) as .safetensors.",
            inputs=[
                UNIID_IDENTITY.Input("identity", tooltip="The identity to keep"),
                io.String.Input(
                    "name",
                    default="identity",
                    tooltip="File name; saved in identities/ of the first uniid model folder (models/uniid, "
                    "or the first 'uniid:' folder of extra_model_paths.yaml)",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace an existing file of that name instead of adding a number",
                ),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, identity, name: str, overwrite: bool) -> io.NodeOutput:
        folder = paths.identity_dir()
        file_name = _safe_name(name)
        path = os.path.join(folder, file_name)
        counter = 1
        while os.path.exists(path) and not overwrite:
            path = os.path.join(folder, f"{file_name.removesuffix('.safetensors')}_{counter:03d}.safetensors")
            counter += 1
        save_identity(identity, path)
        return io.NodeOutput(path, ui=ui.PreviewText(path))


class UniIDLoadIdentity(UniIDNode):
    """Read an identity saved by UniID Save Identity (identities/ of any uniid folder, or input/)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDLoadIdentity",
            display_name="UniID Load Identity",
            category=CATEGORY,
            description="Loads a saved UniID identity.",
            inputs=[
                io.Combo.Input(
                    "identity_file",
                    options=paths.identity_choices(),
                    tooltip="Saved identity: identities/ of every uniid model folder, then ComfyUI's input "
                    "folder",
                ),
            ],
            outputs=[
                UNIID_IDENTITY.Output(display_name="identity"),
                io.String.Output(display_name="class_word"),
            ],
        )

    @classmethod
    def execute(cls, identity_file: str) -> io.NodeOutput:
        identity = load_identity(paths.resolve_identity(identity_file))
        return io.NodeOutput(identity, identity.class_word)
