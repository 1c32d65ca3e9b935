"""Model folders: register models/uniid and models/insightface with ComfyUI and resolve user choices."""

from __future__ import annotations

import os

import folder_paths

from uniid_core.anchor import BUILTIN_NAMES
from uniid_core.checkpoint import is_uniid_file
from uniid_core.errors import CheckpointError
from uniid_core.face.insightface_backend import OFFICIAL_PACK, REQUIRED_FILES
from uniid_core.face.recognition import may_be_recognition_model
from uniid_core.release import (
    KIND_FACE_NET,
    UNIID_KINDS,
    WEIGHT_SUFFIXES,
    classify_file,
    holds_uniid,
    is_weights_name,
)
from uniid_core.weights_file import is_extra_shard

UNIID_FOLDER = "uniid"
INSIGHTFACE_FOLDER = "insightface"
IDENTITY_SUBDIR = "identities"
NAMES_SUBDIR = "names"
WEIGHT_EXTENSIONS = set(WEIGHT_SUFFIXES)
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


def _listable(name: str) -> bool:
    """A model-folder entry worth listing: no hidden folder (download staging), no saved identity."""
    parts = name.replace("\\", "/").split("/")
    return parts[0] != IDENTITY_SUBDIR and not any(part.startswith(".") for part in parts)


def _has_content(folder: str, name: str) -> bool:
    """False for an empty (0-byte) file (an interrupted download is no choice to offer) and for a shard
    after the first of a checkpoint saved in pieces (the first one loads them all)."""
    path = folder_paths.get_full_path(folder, name)
    return path is not None and os.path.getsize(path) > 0 and not is_extra_shard(path)


def release_dirs() -> list[str]:
    """Folders directly under models/uniid that hold UniID branch files (recognised by their keys)."""
    found = set()
    for root in folder_dirs(UNIID_FOLDER):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if os.path.isdir(path) and _listable(entry) and holds_uniid(path):
                found.add(entry + OFFICIAL_DIR_SUFFIX)
    return sorted(found)


def uniid_weight_choices() -> list[str]:
    """Dropdown entries for UniID weights: release folders, then .safetensors/.bin files under models/uniid.

    Training state (optimizer.bin, ...), saved identities, face nets and empty files live there too and
    are left out.
    """
    files = [
        f
        for f in folder_paths.get_filename_list(UNIID_FOLDER)
        if _listable(f)
        and os.path.splitext(f)[1].lower() in UNIID_EXTENSIONS
        and is_weights_name(f)
        and _has_content(UNIID_FOLDER, f)
        and classify_file(folder_paths.get_full_path(UNIID_FOLDER, f)) != KIND_FACE_NET
    ]
    return release_dirs() + files


def _is_face_net_choice(path: str) -> bool:
    """A .pth/.pt/.safetensors file that is not UniID weights, or any weights file keyed as a face net."""
    kind = classify_file(path)
    if path.lower().endswith(".bin"):
        return kind == KIND_FACE_NET
    return kind not in UNIID_KINDS and not is_uniid_file(path)


def face_net_choices() -> list[str]:
    """Face-net dropdown: face nets in models/uniid (release folders included) and models/insightface."""
    out = []
    for folder in (UNIID_FOLDER, INSIGHTFACE_FOLDER):
        for name in folder_paths.get_filename_list(folder):
            if (
                os.path.splitext(name)[1].lower() in WEIGHT_EXTENSIONS
                and _listable(name)
                and is_weights_name(name)
                and _has_content(folder, name)
                and _is_face_net_choice(folder_paths.get_full_path(folder, name))
            ):
                out.append(f"{folder}/{name}")
    return out


def insightface_model_choices() -> list[str]:
    """Model packs under models/insightface/models/ (or misplaced one up), the official buffalo_l first."""
    names = set()
    for root in folder_dirs(INSIGHTFACE_FOLDER):
        for folder in (os.path.join(root, "models"), root):
            if os.path.isdir(folder):
                names.update(
                    d for d in os.listdir(folder) if d != "models" and os.path.isdir(os.path.join(folder, d))
                )
    found = sorted(names, key=lambda name: (name != OFFICIAL_PACK, name))
    return found or list(REQUIRED_FILES)


def recognition_model_choices() -> list[str]:
    """insightface face-recognition models (.onnx, e.g. models/buffalo_l/w600k_r50.onnx) under
    models/insightface; its detection, landmark, gender and face-swap models are left out."""
    return [
        name
        for name in folder_paths.get_filename_list(INSIGHTFACE_FOLDER)
        if may_be_recognition_model(name) and _listable(name) and _has_content(INSIGHTFACE_FOLDER, name)
    ]


def resolve_insightface_file(name: str) -> str:
    """Full path of a file in the insightface model folder (a recognition-model choice)."""
    try:
        return folder_paths.get_full_path_or_raise(INSIGHTFACE_FOLDER, name)
    except FileNotFoundError as exc:
        raise _missing(INSIGHTFACE_FOLDER, name) from exc


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


def find_identity(file_name: str) -> str | None:
    """The saved identity ``identities/<file_name>`` resolves to (first uniid folder holding it), or None."""
    for root in folder_dirs(UNIID_FOLDER):
        path = os.path.join(root, IDENTITY_SUBDIR, file_name)
        if os.path.isfile(path):
            return path
    return None


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
    path = find_identity(name)
    if path is None:
        raise _missing(UNIID_FOLDER, f"{IDENTITY_SUBDIR}/{name}")
    return path


def names_choices() -> list[str]:
    """Celebrity-name lists for the text anchor: built-in (official first), then models/uniid/names/*.txt."""
    out = list(BUILTIN_NAMES)
    for root in folder_dirs(UNIID_FOLDER):
        sub = os.path.join(root, NAMES_SUBDIR)
        if os.path.isdir(sub):
            out += [f"{NAMES_SUBDIR}/{f}" for f in sorted(os.listdir(sub)) if f.lower().endswith(".txt")]
    return out


def resolve_names(choice: str) -> str:
    """A built-in names list's key as it is, or the full path of 'names/<file>.txt'."""
    if choice in BUILTIN_NAMES:
        return choice
    name = choice.removeprefix(NAMES_SUBDIR + "/")
    for root in folder_dirs(UNIID_FOLDER):
        path = os.path.join(root, NAMES_SUBDIR, name)
        if os.path.isfile(path):
            return path
    raise _missing(UNIID_FOLDER, f"{NAMES_SUBDIR}/{name}")
