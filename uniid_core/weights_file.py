"""Weights files on disk: read any of them safely, write them atomically.

Every reader is safe (safetensors, or ``torch.load(weights_only=True)``) and recognises the format from
the first bytes, never from the suffix; every writer is atomic (temp file in the target folder, then
``os.replace``); every failure says what the file was and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import CheckpointError

_SHARD = re.compile(r"(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)(?P<suffix>\.[^.]+)")
"""A shard of a checkpoint saved in pieces (transformers, accelerate): ``model-00001-of-00003.bin``."""


def _new_temp_file(folder: Path, name: str) -> tuple[Path, int]:
    """Create an empty hidden temp file beside the target; returns it and the mode a plain
    ``open(..., "w")`` gives (0666 minus the umask), which the finished file must have."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp, tmp.stat().st_mode & 0o777
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` on a temp file beside ``path``, then rename it to ``path``; no debris on failure.

    The file gets the permissions a plain write would (umask honoured, readable by another user such as
    ComfyUI's). A failed write raises CheckpointError naming ``path`` (never the temp file) and the reason.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, mode = _new_temp_file(target.parent, target.name)
        write(str(tmp))
        os.chmod(tmp, mode)  # writers that replace the file (safetensors) leave it 0600
        os.replace(tmp, target)
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if tmp is not None:
            reason = reason.replace(str(tmp), str(target))
        raise CheckpointError(
            f"could not write {target}: {reason}; check the folder's free space and permissions"
        ) from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def sniff_format(path: Path) -> str:
    """'safetensors', 'torch' or 'unknown', from the first bytes (the suffix is not trusted)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":  # torch.save zip archive
        return "torch"
    if head[8:9] == b"{":  # safetensors: little-endian u64 header length, then the JSON header
        header_len = int.from_bytes(head[:8], "little")
        return "safetensors" if 0 < header_len <= path.stat().st_size - 8 else "truncated-safetensors"
    if head[:1] == b"\x80":  # legacy torch.save pickle
        return "torch"
    return "unknown"


def flatten_tensors(obj: Mapping, prefix: str = "") -> dict[str, Tensor]:
    """Nested dicts of tensors -> flat dotted keys; non-tensor leaves (step counters, args) are dropped."""
    flat: dict[str, Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Tensor):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(flatten_tensors(value, f"{name}."))
    return flat


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a .safetensors file (the reader's own error when it is damaged)."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def shard_group(path: str | os.PathLike) -> list[Path] | None:
    """Every shard of the checkpoint ``path`` is a piece of (present or not); None for a whole file."""
    path = Path(path)
    match = _SHARD.fullmatch(path.name)
    if match is None:
        return None
    index, count, width = int(match["index"]), int(match["count"]), len(match["index"])
    if not 1 <= index <= count:
        return None
    return [
        path.with_name(f"{match['stem']}-{i:0{width}d}-of-{match['count']}{match['suffix']}")
        for i in range(1, count + 1)
    ]


def is_extra_shard(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a shard after the first present one (its group is read through that one)."""
    group = shard_group(path)
    if group is None:
        return False
    first = next((p for p in group if p.is_file()), None)
    return first is not None and first.name != Path(path).name


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The files holding the weights of ``path``: itself, or every shard of its group (all must be there)."""
    path = Path(path)
    group = shard_group(path)
    if group is None:
        return [path]
    missing = [p.name for p in group if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{path} is one of {len(group)} shards of a checkpoint saved in pieces, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing beside it; download or "
            "copy every shard into that folder"
        )
    return group


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors`` or torch file (weights_only) plus safetensors metadata.

    A shard (``model-00001-of-00002.safetensors``) reads as its whole checkpoint: every shard, merged.
    """
    files = shard_files(path)
    if len(files) == 1:
        return _read_one(files[0])
    merged: dict[str, Tensor] = {}
    owner: dict[str, Path] = {}
    metadata: dict[str, str] = {}
    for file in files:
        tensors, meta = _read_one(file)
        for key, value in tensors.items():
            if key in merged:
                raise CheckpointError(
                    f"{owner[key].name} and {file.name} in {file.parent} both hold {key}: the shards come "
                    "from different saves; download or copy them again"
                )
            merged[key], owner[key] = value, file
        metadata = metadata or meta
    return merged, metadata



def pickled_objects_error(path: Path, exc: pickle.UnpicklingError) -> CheckpointError | None:
    """The error for a file torch refused to load weights-only (it holds Python objects), else None."""
    if "weights_only" not in str(exc) and "eights only" not in str(exc):
        return None
    return CheckpointError(
        f"{path} holds Python objects besides tensors; it is refused because only weights-only loading is "
        "safe. Re-save it as a plain state dict or .safetensors"
    )

def _read_one(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of one file, every failure a CheckpointError naming it."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a weights file; give the weights file inside it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path (or download the weights first)")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path}: ONNX is not supported; use the PyTorch weights (.pth/.safetensors)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download?); download it again")
    kind = sniff_format(path)
    broken = f"{path} ({size} bytes) could not be read as weights: it is truncated or not a weights file"
    if kind == "truncated-safetensors":
        raise CheckpointError(f"{broken} (the safetensors header is cut off); download or convert it again")
    if kind == "safetensors":
        try:
            return read_safetensors(path)
        except Exception as exc:  # the Rust reader raises SafetensorError for every kind of damage
            raise CheckpointError(f"{broken} ({exc}); download or convert it again") from exc
    if kind == "unknown":
        raise CheckpointError(f"{broken} (neither safetensors nor a PyTorch file); check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = pickled_objects_error(path, exc)
        raise (refused or CheckpointError(f"{broken} ({exc}); download it again")) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{broken} ({exc}); download it again") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return flatten_tensors(obj), {}
