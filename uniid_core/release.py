"""Find the UniID branch files and the face net inside a release folder, whatever its shape.

Files are recognised by their tensor names, never by file or folder names, and only files that can hold
weights are opened (training state such as ``optimizer.bin``, ``scheduler.bin``, ``sampler.bin`` or
``random_states_0.pkl`` never is). Keys are read without loading tensor data: the safetensors header, or a
memory-mapped, weights-only torch load. Folder links are followed (as ComfyUI's own listing does), each real
folder once; a checkpoint saved in shards counts as one file (its first shard stands for the group).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError
from .weights_file import (
    flatten_tensors,
    is_extra_shard,
    pickled_objects_error,
    shard_files,
    shard_group,
    sniff_format,
)
from .weights_keys import ADAPTER_PREFIX, TEXT_PREFIX, add_branch_prefixes, is_face_net_keys, strip_wrappers

RELEASE_DEPTH = 3
"""Folder levels searched below a release folder (e.g. ``text_branch/checkpoint-12/pytorch_model.bin``)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_TRAINING_STATE = re.compile(
    r"(optimizer|scheduler|lr_scheduler|scaler|random_states|rng_state|custom_checkpoint|training_args"
    r"|trainer_state|sampler|dl_state_dict)(_\d+)?"
)
"""Training state that accelerate's save_state and the transformers Trainer write beside the model."""
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

LOG = logging.getLogger("UniID")
_KIND_CACHE: dict[tuple, str] = {}


def is_weights_name(path: str | os.PathLike) -> bool:
    """Whether a file name may hold model weights (a weights suffix, and not training state by name)."""
    path = Path(path)
    return path.suffix.lower() in WEIGHT_SUFFIXES and not _TRAINING_STATE.fullmatch(path.stem.lower())


def read_keys(path: str | os.PathLike) -> list[str]:
    """Tensor names of one weights file without reading its tensor data; CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (a broken link or a removed file?)")
    try:
        kind = sniff_format(path) if path.stat().st_size else "empty"
        if kind == "safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return list(handle.keys())
        if kind == "torch":
            with path.open("rb") as handle:
                zipped = handle.read(2) == b"PK"
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
            if isinstance(obj, dict):
                return list(flatten_tensors(obj))
    except pickle.UnpicklingError as exc:
        refused = pickled_objects_error(path, exc)
        raise (refused or CheckpointError(f"{path}: cannot read its tensor names ({exc})")) from exc
    except Exception as exc:  # any damage: not usable weights
        reason = (str(exc).strip() or type(exc).__name__).split(". ")[0].splitlines()[0]
        raise CheckpointError(
            f"{path}: cannot read its tensor names ({reason}); the file is truncated or damaged"
        ) from exc
    if kind == "empty":
        raise CheckpointError(f"{path}: the file is empty (an interrupted download?)")
    raise CheckpointError(f"{path}: not a safetensors or weights-only PyTorch file")


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    """Tensor names of a checkpoint: one file, or every shard of the group ``path`` belongs to."""
    return [key for file in shard_files(path) for key in read_keys(file)]


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
    """The kind of a weights file or shard group (see classify_keys), or "unreadable"; memoised per size
    and mtime of every file involved."""
    path = Path(path)
    try:
        key = tuple(_stat_key(file) for file in shard_group(path) or [path])
    except OSError:
        return KIND_UNREADABLE
    if key not in _KIND_CACHE:
        try:
            _KIND_CACHE[key] = classify_keys(checkpoint_keys(path))
        except CheckpointError:
            _KIND_CACHE[key] = KIND_UNREADABLE
    return _KIND_CACHE[key]


def _stat_key(path: Path) -> tuple[str, int, int] | tuple[str]:
    """What identifies a file's version: real path, size and mtime (the path alone when it is absent)."""
    if not path.exists() and not path.is_symlink():
        return (str(path),)
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def why_unreadable(path: str | os.PathLike) -> str:
    """The reason a file classed "unreadable" cannot be read (for error messages)."""
    try:
        checkpoint_keys(path)
    except CheckpointError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return f"{path}: it could not be read"


def weight_files(folder: str | os.PathLike, depth: int = RELEASE_DEPTH) -> Iterator[Path]:
    """Files under ``folder`` (``depth`` folder levels down) whose names may hold weights, sorted.

    Links are followed, each real folder and file once (no loops, no duplicates); of a sharded checkpoint
    only the first present shard is given.
    """
    folder = Path(folder)
    seen = {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        level = len(Path(root).relative_to(folder).parts)
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if not name.startswith(".") and name not in _SKIPPED_DIRS and level < depth and real not in seen:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = Path(root) / name
            real = os.path.realpath(path)
            if name.startswith(".") or not is_weights_name(name) or real in seen or is_extra_shard(path):
                continue
            seen.add(real)
            yield path


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
            f"{kind}: {', '.join(self._name(p) for p in paths)}"
            for kind, paths in self.found.items()
            if paths and kind != KIND_OTHER
        ]
        return "; ".join(parts) or "no weights files"

    def _name(self, path: Path) -> str:
        """A found file relative to the folder; a shard group says how many shards it has."""
        group = shard_group(path)
        more = f" and its {len(group) - 1} other shard(s)" if group and len(group) > 1 else ""
        return path.relative_to(self.root).as_posix() + more

    def branch_files(self) -> list[Path]:
        """The file(s) holding the text and adapter branches.

        An error when a branch is found twice, or when one is missing and some file could not be read
        (a truncated or broken branch file must not load as half a model); a log line when the folder
        holds one branch only.
        """
        text, adapter = self._branches()
        for branch, files in (("text", text), ("adapter", adapter)):
            if len(files) > 1:
                raise CheckpointError(self._ambiguity(branch, files))
        missing = self.missing_branches()
        unreadable = self.of(KIND_UNREADABLE)
        reasons = "; ".join(why_unreadable(path) for path in unreadable) if missing else ""
        if len(missing) == 2:
            raise CheckpointError(
                f"{self.root}: no UniID weights found within {RELEASE_DEPTH} folder levels (found "
                f"{self.listing()}); expected files holding text_branch.* / adapter_branch.* tensors, e.g. "
                "text_branch_ckpt/pytorch_model.bin and adapter_ckpt/pytorch_model.bin"
                + (f". Unreadable: {reasons}" if unreadable else "")
            )
        if missing and unreadable:
            raise CheckpointError(
                f"{self.root}: the {missing[0]} branch is not there and {len(unreadable)} weights file(s) "
                f"could not be read: {reasons}. Download or copy {'it' if len(unreadable) == 1 else 'them'} "
                "again (or move what is not UniID weights out of the folder)"
            )
        if missing:
            LOG.warning(
                "UniID: %s holds the %s branch only (%s); the %s branch is not loaded",
                self.root,
                "text" if text else "adapter",
                self._name((text or adapter)[0]),
                missing[0],
            )
        return list(dict.fromkeys(text + adapter))

    def _branches(self) -> tuple[list[Path], list[Path]]:
        """The text- and adapter-branch files found (a safetensors copy replaces a .bin beside it)."""
        text = _prefer_safetensors(self.of(KIND_TEXT) + self.of(KIND_BOTH))
        adapter = _prefer_safetensors(self.of(KIND_ADAPTER) + self.of(KIND_BOTH))
        return text, adapter

    def missing_branches(self) -> list[str]:
        """The branches ("text", "adapter") that no file found holds."""
        return [name for name, files in zip(("text", "adapter"), self._branches(), strict=True) if not files]

    def _ambiguity(self, branch: str, files: list[Path]) -> str:
        """The error for a branch found more than once: what was found and which paths to move away."""
        ordered = sorted(files, key=lambda p: _natural_key(p.relative_to(self.root).as_posix()))
        keep, others = ordered[-1], [self._movable(p) for p in ordered[:-1]]
        them = "it" if len(others) == 1 else "them"
        return (
            f"{self.root} holds {len(files)} {branch} branches, so it is not clear which to load (found "
            f"{self.listing()}). Keep one {branch} branch in the folder: e.g. to use "
            f"{self._name(keep)}, move {', '.join(others)} out of {self.root} (or delete {them}), then load "
            "the folder again"
        )

    def _movable(self, path: Path) -> str:
        """What to move away to drop ``path``: its folder when nothing else found is there, else the file."""
        folder = path.parent
        alone = not any(
            other != path and folder in other.parents for paths in self.found.values() for other in paths
        )
        shown = folder if folder != self.root and alone else path
        return shown.relative_to(self.root).as_posix()


def _natural_key(text: str) -> list:
    """Sort key that orders numbers by value (checkpoint-6 before checkpoint-12)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


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
