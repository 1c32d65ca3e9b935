"""Save and load identities as .safetensors (no pickle), so a face is reusable without the face models."""

from __future__ import annotations

import os
import re
import unicodedata

from comfy_api.v0_0_2 import io, ui

from uniid_core.errors import UniIDError
from uniid_core.identity import load_identity, save_identity

from . import paths
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID_IDENTITY

SUFFIX = ".safetensors"


def _safe_name(name: str) -> str:
    """A file name from a typed name: letters and digits of any script kept (NFC), other characters as
    ``_``, no folders, no leading dot, ending in .safetensors; a name with nothing to keep is refused."""
    text = unicodedata.normalize("NFC", name.strip()).replace("\\", "/").rstrip("/")
    stem = os.path.basename(text)
    if stem.lower().endswith(SUFFIX):
        stem = stem[: -len(SUFFIX)]
    stem = re.sub(r"[^\w.-]+", "_", stem).lstrip(".")
    if not stem.strip("_.-"):
        raise UniIDError(
            f"UniID Save Identity: the name {name!r} has no letter or digit to make a file name of; type a "
            "name such as 'alice'"
        )
    return stem + SUFFIX


def _free_path(file_name: str, overwrite: bool) -> str:
    """Where to save: with overwrite, the file the Load dropdown opens for that name (in any uniid
    folder); else a name no uniid folder uses yet (``name_001`` ...), in the first uniid folder."""
    existing = paths.find_identity(file_name)
    if existing is not None and overwrite:
        return existing
    stem, candidate, counter = file_name[: -len(SUFFIX)], file_name, 1
    while paths.find_identity(candidate) is not None:
        candidate = f"{stem}_{counter:03d}{SUFFIX}"
        counter += 1
    return os.path.join(paths.identity_dir(), candidate)


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
                    "or the first 'uniid:' folder of extra_model_paths.yaml). Any language; characters a "
                    "file name cannot hold become _",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace an existing file of that name instead of adding a number. A name saved "
                    "in any uniid folder counts, and is replaced where it is",
                ),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, identity, name: str, overwrite: bool) -> io.NodeOutput:
        path = _free_path(_safe_name(name), overwrite)
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
