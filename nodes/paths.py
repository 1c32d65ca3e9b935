"""Model folders: register models/uniid and models/insightface with ComfyUI and resolve user choices."""

from __future__ import annotations

import os

import folder_paths

from uniid_core.checkpoint import is_uniid_file
from uniid_core.errors import CheckpointError

UNIID_FOLDER = "uniid"
INSIGHTFACE_FOLDER = "insightface"
IDENTITY_SUBDIR = "identities"
WEIGHT_EXTENSIONS = {".safetensors", ".bin", ".pth", ".pt"}
UNIID_EXTENSIONS = {".safetensors", ".bin"}
OFFICIAL_DIR_SUFFIX = "/"


def _register(name: str, extensions: set[str]) -> None:
    """Add models/<name> and our extensions; folders from extra_model_paths.yaml stay first, so the user's
    own folder is where new files (saved identities) go."""
    default = os.path.join(folder_paths.models_dir, name)
    folder_paths.add_model_folder_path(name, default, is_default=False)
    paths, known = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def register_folders() -> None:
    """Make "uniid" and "insightface" model folders known to ComfyUI (idempotent)."""
    _register(UNIID_FOLDER, WEIGHT_EXTENSIONS)
    _register(INSIGHTFACE_FOLDER, WEIGHT_EXTENSIONS | {".onnx"})


def folder_dirs(name: str) -> list[str]:
    """Every directory ComfyUI searches for folder ``name`` (defaults plus extra_model_paths.yaml)."""
    return folder_paths.get_folder_paths(name)


def _has_content(folder: str, name: str) -> bool:
    """False for an empty (0-byte) file: an interrupted download is no choice to offer."""
    path = folder_paths.get_full_path(folder, name)
    return path is not None and os.path.getsize(path) > 0


def _official_dirs() -> list[str]:
    """Folders under models/uniid holding official branch checkpoints (*/pytorch_model.bin)."""
    found = set()
    for root in folder_dirs(UNIID_FOLDER):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if not os.path.isdir(path) or entry == IDENTITY_SUBDIR:
                continue
            subdirs = [os.path.join(path, s) for s in os.listdir(path)]
            if any(os.path.isfile(os.path.join(s, "pytorch_model.bin")) for s in subdirs if os.path.isdir(s)):
                found.add(entry + OFFICIAL_DIR_SUFFIX)
    return sorted(found)


def uniid_weight_choices() -> list[str]:
    """Dropdown entries for UniID weights: .safetensors/.bin under models/uniid plus official folders.

    Face nets (.pth/.pt), saved identities and empty files live in the same folder and are left out.
    """
    files = [
        f
        for f in folder_paths.get_filename_list(UNIID_FOLDER)
        if not f.replace("\\", "/").startswith(IDENTITY_SUBDIR + "/")
        and os.path.splitext(f)[1].lower() in UNIID_EXTENSIONS
        and _has_content(UNIID_FOLDER, f)
    ]
    return _official_dirs() + files


def face_net_choices() -> list[str]:
    """Face-net dropdown: .pth/.safetensors in models/uniid and models/insightface, minus UniID weights and
    empty files."""
    out = []
    for folder in (UNIID_FOLDER, INSIGHTFACE_FOLDER):
        for name in folder_paths.get_filename_list(folder):
            if (
                os.path.splitext(name)[1].lower() in (".pth", ".pt", ".safetensors")
                and not name.startswith(IDENTITY_SUBDIR)
                and _has_content(folder, name)
                and not is_uniid_file(folder_paths.get_full_path(folder, name))
            ):
                out.append(f"{folder}/{name}")
    return out


def insightface_model_choices() -> list[str]:
    """Model packs (antelopev2, buffalo_l, ...) under models/insightface/models/ (or misplaced one up)."""
    names = set()
    for root in folder_dirs(INSIGHTFACE_FOLDER):
        for folder in (os.path.join(root, "models"), root):
            if os.path.isdir(folder):
                names.update(
                    d for d in os.listdir(folder) if d != "models" and os.path.isdir(os.path.join(folder, d))
                )
    return sorted(names) or ["antelopev2", "buffalo_l"]


def _missing(folder: str, name: str) -> CheckpointError:
    where = ", ".join(folder_dirs(folder))
    return CheckpointError(
        f"'{name}' was not found in the '{folder}' model folder ({where}). Put the file there (or list "
        f"another folder under '{folder}:' in extra_model_paths.yaml) and refresh the node."
    )


def resolve_uniid_weights(name: str) -> str:
    """Full path of a UniID weights choice (a file or an official checkpoint folder)."""
    if name.endswith(OFFICIAL_DIR_SUFFIX):
        for root in folder_dirs(UNIID_FOLDER):
            path = os.path.join(root, name.rstrip("/"))
            if os.path.isdir(path):
                return path
        raise _missing(UNIID_FOLDER, name)
    try:
        return folder_paths.get_full_path_or_raise(UNIID_FOLDER, name)
    except FileNotFoundError as exc:
        raise _missing(UNIID_FOLDER, name) from exc


def resolve_face_net(choice: str) -> str:
    """Full path of a face-net choice written as '<folder>/<file>'."""
    folder, _, name = choice.partition("/")
    if folder not in (UNIID_FOLDER, INSIGHTFACE_FOLDER) or not name:
        folder, name = UNIID_FOLDER, choice
    try:
        return folder_paths.get_full_path_or_raise(folder, name)
    except FileNotFoundError as exc:
        raise _missing(folder, name) from exc


def identity_dir() -> str:
    """Where new identities are saved: identities/ in the first configured uniid folder (created on demand;
    an extra_model_paths.yaml entry comes before ComfyUI/models/uniid)."""
    path = os.path.join(folder_dirs(UNIID_FOLDER)[0], IDENTITY_SUBDIR)
    os.makedirs(path, exist_ok=True)
    return path


def identity_choices() -> list[str]:
    """Saved identities: identities/*.safetensors of every uniid folder, then the input folder's."""
    out = []
    for root in folder_dirs(UNIID_FOLDER):
        sub = os.path.join(root, IDENTITY_SUBDIR)
        if os.path.isdir(sub):
            out += [f"{IDENTITY_SUBDIR}/{f}" for f in sorted(os.listdir(sub)) if f.endswith(".safetensors")]
    in_dir = folder_paths.get_input_directory()
    if os.path.isdir(in_dir):
        out += [f"input/{f}" for f in sorted(os.listdir(in_dir)) if f.endswith(".safetensors")]
    return list(dict.fromkeys(out))


def resolve_identity(choice: str) -> str:
    """Full path of an identity choice ('identities/<f>' or 'input/<f>')."""
    kind, _, name = choice.partition("/")
    if kind == "input":
        path = os.path.join(folder_paths.get_input_directory(), name)
        if os.path.isfile(path):
            return path
        raise CheckpointError(
            f"identity '{name}' not found in ComfyUI's input folder {os.path.dirname(path)}"
        )
    for root in folder_dirs(UNIID_FOLDER):
        path = os.path.join(root, IDENTITY_SUBDIR, name)
        if os.path.isfile(path):
            return path
    raise _missing(UNIID_FOLDER, f"{IDENTITY_SUBDIR}/{name}")
