"""Find the UniID branch files and the face net inside a release folder, whatever its shape.

Files are recognised by their tensor names, never by file or folder names, and only files that can hold
weights are opened (training state such as ``optimizer.bin``, ``scheduler.bin`` or ``random_states_0.pkl``
never is). Keys are read without loading tensor data: the safetensors header, or a memory-mapped,
weights-only torch load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError
from .weights_file import flatten_tensors, sniff_format
from .weights_keys import ADAPTER_PREFIX, TEXT_PREFIX, add_branch_prefixes, is_face_net_keys, strip_wrappers

RELEASE_DEPTH = 3
"""Folder levels searched below a release folder (e.g. ``text_branch/checkpoint-12/pytorch_model.bin``)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_TRAINING_STATE = re.compile(
    r"(optimizer|scheduler|lr_scheduler|scaler|random_states|rng_state|custom_checkpoint|training_args"
    r"|trainer_state)(_\d+)?"
)
_SKIPPED_DIRS = ("identities", "__pycache__")
_PREFERENCE = {".safetensors": 0, ".bin": 1, ".pth": 2, ".pt": 2}

KIND_TEXT = "text branch"
KIND_ADAPTER = "adapter branch"
KIND_BOTH = "both branches"
KIND_FACE_NET = "face net"
KIND_OTHER = "other"
KIND_UNREADABLE = "unreadable"
UNIID_KINDS = (KIND_TEXT, KIND_ADAPTER, KIND_BOTH)
"""The kinds of file that hold UniID weights."""

_KIND_CACHE: dict[tuple[str, int, int], str] = {}


def is_weights_name(path: str | os.PathLike) -> bool:
    """Whether a file name may hold model weights (a weights suffix, and not training state by name)."""
    path = Path(path)
    return path.suffix.lower() in WEIGHT_SUFFIXES and not _TRAINING_STATE.fullmatch(path.stem.lower())


def read_keys(path: str | os.PathLike) -> list[str]:
    """Tensor names of a weights file without reading its tensor data; CheckpointError if unreadable."""
    path = Path(path)
    kind = sniff_format(path) if path.is_file() and path.stat().st_size else "unknown"
    try:
        if kind == "safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return list(handle.keys())
        if kind == "torch":
            with path.open("rb") as handle:
                zipped = handle.read(2) == b"PK"
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
            if isinstance(obj, dict):
                return list(flatten_tensors(obj))
    except Exception as exc:  # any damage or a pickle with objects: not usable weights
        raise CheckpointError(f"{path}: cannot read its tensor names ({exc})") from exc
    raise CheckpointError(f"{path}: not a safetensors or weights-only PyTorch file")


def classify_keys(keys: list[str]) -> str:
    """What a state dict is, from its tensor names: a UniID branch, both, the face net, or other."""
    keys = list(add_branch_prefixes(strip_wrappers(dict.fromkeys(keys))))
    text = any(k.startswith(TEXT_PREFIX) for k in keys)
    adapter = any(k.startswith(ADAPTER_PREFIX) for k in keys)
    if text and adapter:
        return KIND_BOTH
    if text:
        return KIND_TEXT
    if adapter:
        return KIND_ADAPTER
    return KIND_FACE_NET if is_face_net_keys(keys) else KIND_OTHER


def classify_file(path: str | os.PathLike) -> str:
    """The kind of a weights file (see classify_keys), or "unreadable"; memoised per size and mtime."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return KIND_UNREADABLE
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _KIND_CACHE:
        try:
            _KIND_CACHE[key] = classify_keys(read_keys(path))
        except CheckpointError:
            _KIND_CACHE[key] = KIND_UNREADABLE
    return _KIND_CACHE[key]


def weight_files(folder: str | os.PathLike, depth: int = RELEASE_DEPTH) -> Iterator[Path]:
    """Files under ``folder`` (``depth`` folder levels down) whose names may hold weights, sorted."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder):
        level = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS and level < depth
        )
        for name in sorted(files):
            if not name.startswith(".") and is_weights_name(name):
                yield Path(root) / name


@dataclass
class ReleaseContents:
    """The weights files of a release folder, grouped by what their keys say they are."""

    root: Path
    found: dict[str, list[Path]] = field(default_factory=dict)

    def of(self, kind: str) -> list[Path]:
        """Files of one kind (KIND_TEXT, KIND_ADAPTER, KIND_BOTH, KIND_FACE_NET, ...)."""
        return self.found.get(kind, [])

    def listing(self) -> str:
        """What was found, one kind per clause, with paths relative to the folder."""
        parts = [
            f"{kind}: {', '.join(str(p.relative_to(self.root)) for p in paths)}"
            for kind, paths in self.found.items()
            if paths and kind != KIND_OTHER
        ]
        return "; ".join(parts) or "no weights files"

    def branch_files(self) -> list[Path]:
        """The file(s) holding the text and adapter branches; an error when a branch is found twice."""
        text = _prefer_safetensors(self.of(KIND_TEXT) + self.of(KIND_BOTH))
        adapter = _prefer_safetensors(self.of(KIND_ADAPTER) + self.of(KIND_BOTH))
        for branch, files in (("text", text), ("adapter", adapter)):
            if len(files) > 1:
                raise CheckpointError(
                    f"{self.root} holds {len(files)} {branch} branches, so it is not clear which to load "
                    f"(found {self.listing()}); pick one file or folder in it, or remove the others"
                )
        if not text and not adapter:
            raise CheckpointError(
                f"{self.root}: no UniID weights found within {RELEASE_DEPTH} folder levels (found "
                f"{self.listing()}); expected files holding text_branch.* / adapter_branch.* tensors, e.g. "
                "text_branch_ckpt/pytorch_model.bin and adapter_ckpt/pytorch_model.bin"
            )
        return list(dict.fromkeys(text + adapter))


def _prefer_safetensors(files: list[Path]) -> list[Path]:
    """Per folder, keep only the preferred format: a .safetensors copy wins over .bin/.pth beside it."""
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    kept = []
    for group in by_folder.values():
        best = min(_PREFERENCE[p.suffix.lower()] for p in group)
        kept += [p for p in group if _PREFERENCE[p.suffix.lower()] == best]
    return sorted(set(kept))


def scan_release(folder: str | os.PathLike, depth: int = RELEASE_DEPTH) -> ReleaseContents:
    """Classify every weights file of a release folder (up to ``depth`` folder levels down) by its keys."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    contents = ReleaseContents(root=folder)
    for path in weight_files(folder, depth):
        contents.found.setdefault(classify_file(path), []).append(path)
    return contents


def holds_uniid(folder: str | os.PathLike) -> bool:
    """Whether a folder holds at least one UniID branch file within RELEASE_DEPTH levels (cheap, memoised)."""
    return any(classify_file(path) in UNIID_KINDS for path in weight_files(folder))
