"""Load and save UniID weights: the official two-folder layout, the project's single file, the face net.

Files are read safely and written atomically (uniid_core.weights_file); their tensor names say what they
hold (uniid_core.weights_keys); every failure says what the file was and what to do.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .errors import CheckpointError
from .family import SDXL, get_family
from .models.iresnet import IRESNET100_BLOCKS, FaceRecognitionNet
from .models.uniid import UniIDConfig, UniIDModel, weights_fingerprint
from .precision import dtype_label
from .release import scan_release
from .weights_file import atomic_write, read_tensors
from .weights_keys import (
    ADAPTER_PREFIX,
    TEXT_PREFIX,
    add_branch_prefixes,
    foreign_kind,
    is_face_net_keys,
    is_uniid_keys,
    strip_wrappers,
)

FORMAT = "uniid"
FORMAT_VERSION = 1
OFFICIAL_FILES = ("pytorch_model.bin", "model.safetensors")
OFFICIAL_SHARDS = ("pytorch_model-*1-of-*.bin", "model-*1-of-*.safetensors")
"""First shards of the same files saved in pieces (``pytorch_model-00001-of-00002.bin``)."""
_SHOWN = 3  # keys shown per problem list


def _brief(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def is_uniid_file(path: str | os.PathLike) -> bool:
    """True for the project's single-file format (reads only the safetensors header; lists stay fast)."""
    if not str(path).endswith(".safetensors"):
        return False
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # an unreadable file is not ours; loading it later gives the precise error
        return False


def _uniid_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file and normalise it to UniID keys, refusing other kinds of checkpoints clearly."""
    tensors, metadata = read_tensors(path)
    tensors = strip_wrappers(tensors)
    if not is_uniid_keys(tensors):
        foreign = foreign_kind(tensors)
        if foreign:
            raise CheckpointError(f"{path} is {foreign[0]}, not UniID weights: {foreign[1]}")
        if is_face_net_keys(tensors):
            raise CheckpointError(
                f"{path} is a face-recognition backbone (IResNet), not UniID weights: "
                "load it as the face model (load_face_net / the face-net input)"
            )
        raise CheckpointError(
            f"{path} holds no UniID tensors (expected keys under text_branch. / adapter_branch.; "
            f"found e.g. {_brief(list(tensors)[:_SHOWN]) or 'nothing'})"
        )
    return add_branch_prefixes(tensors), metadata


def _layer_count(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _require(tensors: Mapping[str, Tensor], key: str, what: str, source: str) -> Tensor:
    if key not in tensors:
        raise CheckpointError(
            f"{source}: the {what} weights are incomplete: {key} is missing; download or convert the "
            "checkpoint again"
        )
    return tensors[key]


def infer_config(
    tensors: Mapping[str, Tensor], family: str = "sdxl", source: str = "the UniID weights"
) -> UniIDConfig:
    """UniID sizes read from the tensors themselves (token counts, widths, depths, attn2 layers).

    ``source`` (the file or files the tensors came from) starts every error message. Weights sized for
    one of the family's look-alikes (an SD1.5 text tower or adapter) are refused.
    """
    spec = get_family(family)
    keys = list(tensors)
    config = UniIDConfig(None, None, None, family=family)
    if any(k.startswith(TEXT_PREFIX) for k in keys):
        w1 = int(_require(tensors, TEXT_PREFIX + "norm_1.weight", "text-branch", source).shape[0])
        other = spec.look_alike(w1)
        if other is not None and TEXT_PREFIX + "norm_2.weight" not in tensors:
            widths = " + ".join(map(str, spec.text_widths))
            raise CheckpointError(
                f"{source}: this text branch has a single {w1}-wide tower ({other.short}); UniID here "
                f"supports {spec.title} ({widths}): use UniID weights trained for {spec.title}"
            )
        w2 = _require(tensors, TEXT_PREFIX + "norm_2.weight", "text-branch", source).shape[0]
        queries = _require(tensors, TEXT_PREFIX + "proj_1.proj.2.weight", "text-branch", source).shape[0]
        config.num_text_tokens = max(1, queries // w1)
        config.text_widths = (int(w1), int(w2))
        config.text_depth = _layer_count(keys, TEXT_PREFIX + "text_resampler_1.layers.")
    if any(k.startswith(ADAPTER_PREFIX) for k in keys):
        latents = _require(tensors, ADAPTER_PREFIX + "latents", "adapter-branch", source)
        proj_out = _require(
            tensors, ADAPTER_PREFIX + "adapter_resampler.proj_out.weight", "adapter-branch", source
        )
        pattern = re.compile(re.escape(ADAPTER_PREFIX) + r"adapter_modules\.(\d+)\.to_k_ip\.weight$")
        widths = {int(m.group(1)): tensors[k] for k in keys if (m := pattern.match(k))}
        if not widths:
            raise CheckpointError(
                f"{source}: the adapter-branch weights hold no adapter_modules.<i>.to_k_ip.weight tensors; "
                "download or convert the checkpoint again"
            )
        context_dims = {int(w.shape[1]) for w in widths.values()} | {int(proj_out.shape[0])}
        other = next((spec.look_alike(dim) for dim in sorted(context_dims) if spec.look_alike(dim)), None)
        if other is not None:
            raise CheckpointError(
                f"{source}: this is an {other.short}-width adapter (context dim {other.context_dim}); UniID "
                f"here needs {spec.title} weights (context dim {spec.context_dim}): use UniID weights "
                f"trained for {spec.title}"
            )
        config.num_adapter_tokens = int(latents.shape[1])
        config.adapter_hidden_dim = int(latents.shape[2])
        config.context_dim = int(proj_out.shape[0])
        config.layer_widths = {i: int(w.shape[0]) for i, w in sorted(widths.items())}
        config.adapter_depth = _layer_count(keys, ADAPTER_PREFIX + "adapter_resampler.layers.")
    return config


def _check_fit(model: nn.Module, tensors: Mapping[str, Tensor], source: str, what: str) -> None:
    """Raise one CheckpointError naming missing/unexpected keys and shape mismatches, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {shape}"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_brief(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_brief(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} with wrong shapes ({'; '.join(mismatched[:_SHOWN])})")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {what}: {'; '.join(problems)}. The file is incomplete, damaged or of "
            "another version: download or convert it again"
        )


def _cast(tensors: Mapping[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    if dtype is None:
        return dict(tensors)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def uniid_from_tensors(
    tensors: Mapping[str, Tensor],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    fingerprint: str | None = None,
    family: str = "sdxl",
) -> UniIDModel:
    """Validate UniID-keyed tensors and wrap them in a UniIDModel (eval mode, no gradients)."""
    config = infer_config(tensors, family, source)
    with torch.device("meta"):
        model = UniIDModel(config, fingerprint="pending")
    _check_fit(model, tensors, source, "a UniID model")
    model.fingerprint = fingerprint or weights_fingerprint(tensors)
    model.load_state_dict(_cast(tensors, dtype), strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def _branch_file(path: Path) -> Path:
    """The weights file of an official branch folder (or the path itself when it is a file); for a
    checkpoint saved in shards, its first shard (which reads as the whole)."""
    if path.is_file():
        return path
    for name in OFFICIAL_FILES:
        if (path / name).is_file():
            return path / name
    for pattern in OFFICIAL_SHARDS:
        first = sorted(path.glob(pattern))
        if first:
            return first[0]
    if path.is_dir():
        raise CheckpointError(f"{path}: no {' or '.join(OFFICIAL_FILES)} here; give the weights file")
    raise CheckpointError(f"{path}: no such file or folder")


def _merge(parts: list[tuple[Path, dict[str, Tensor], str | None]]) -> dict[str, Tensor]:
    """Combine branch files; ``wanted`` keeps only that branch's keys (other leftovers get reported)."""
    merged: dict[str, Tensor] = {}
    owner: dict[str, Path] = {}
    for path, tensors, wanted in parts:
        if wanted is not None:
            other = ADAPTER_PREFIX if wanted == TEXT_PREFIX else TEXT_PREFIX
            if not any(k.startswith(wanted) for k in tensors):
                holds = "the adapter branch" if other == ADAPTER_PREFIX else "the text branch"
                raise CheckpointError(
                    f"{path} was given as the {wanted[:-1].replace('_', ' ')} but holds {holds} only; "
                    "swap the two paths"
                )
            tensors = {k: v for k, v in tensors.items() if not k.startswith(other)}
        for key, value in tensors.items():
            if key in merged:
                raise CheckpointError(
                    f"{owner[key]} and {path} both hold {key.split('.')[0]}; give each branch only once"
                )
            merged[key] = value
            owner[key] = path
    return merged


def load_official(
    text: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> UniIDModel:
    """Official release: a text-branch and/or adapter folder (or their pytorch_model.bin)."""
    if text is None and adapter is None:
        raise CheckpointError("give the text-branch checkpoint, the adapter checkpoint, or both")
    parts = []
    for given, wanted in ((text, TEXT_PREFIX), (adapter, ADAPTER_PREFIX)):
        if given is not None:
            file = _branch_file(Path(given))
            parts.append((file, _uniid_tensors(file)[0], wanted))
    sources = " + ".join(str(p[0]) for p in parts)
    return uniid_from_tensors(_merge(parts), sources, dtype, device)


def load_uniid(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> UniIDModel:
    """Any UniID weights: the single .safetensors, a branch file, or a release folder of any shape.

    A folder is searched up to three levels down and each file is recognised by its tensor names
    (see uniid_core.release); a branch found twice is an error that lists what was found.
    """
    path = Path(path)
    if path.is_dir():
        files = scan_release(path).branch_files()
    else:
        files = [path]
    parts = []
    fingerprint = None
    family = SDXL.name  # official branch files carry no metadata
    for file in files:
        tensors, metadata = _uniid_tensors(file)
        if metadata.get("format") == FORMAT:
            fingerprint, family = _check_metadata(file, metadata, tensors)
        parts.append((file, tensors, None))
    if len(parts) > 1:
        fingerprint = None  # a combination of files is a new set of weights
    sources = " + ".join(str(p[0]) for p in parts)
    return uniid_from_tensors(_merge(parts), sources, dtype, device, fingerprint, family)


def _check_metadata(
    file: Path, metadata: Mapping[str, str], tensors: Mapping[str, Tensor]
) -> tuple[str, str]:
    """Validate the single-file header against the tensors; returns (fingerprint, family)."""
    try:
        version = int(metadata.get("format_version", "0"))
        stored = UniIDConfig.from_metadata(metadata)
    except (ValueError, TypeError, AttributeError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: damaged UniID metadata ({exc}); convert the weights again") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file} uses UniID file format {version}, newer than this code reads ({FORMAT_VERSION}); "
            "update the node pack"
        )
    actual = infer_config(tensors, stored.family, str(file))
    checked = []
    if actual.num_text_tokens is not None:
        checked += ["num_text_tokens", "text_widths"]
    if actual.num_adapter_tokens is not None:
        checked += ["num_adapter_tokens", "adapter_hidden_dim", "context_dim"]
    for name in checked:
        if getattr(stored, name) != getattr(actual, name):
            raise CheckpointError(
                f"{file}: metadata says {name}={getattr(stored, name)} but the tensors hold "
                f"{getattr(actual, name)}; the file was edited or damaged, convert it again"
            )
    return metadata.get("fingerprint", ""), stored.family


def save_uniid(model: UniIDModel, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write the single-file format (both branches + metadata) atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: the UniID single-file format is .safetensors; use that suffix")
    tensors = _cast({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, dtype)
    any_float = next((v for v in tensors.values() if v.is_floating_point()), None)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "fingerprint": model.fingerprint,
        "dtype": dtype_label(any_float.dtype) if any_float is not None else "none",
        **model.config.to_metadata(),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def face_net_blocks(keys: Iterable[str]) -> tuple[int, int, int, int]:
    """Residual blocks per stage of an IResNet state dict (IResNet-100: 3, 13, 30, 3)."""
    keys = list(keys)
    return tuple(_layer_count(keys, f"layer{i}.") for i in range(1, 5))  # type: ignore[return-value]


def load_face_net(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> FaceRecognitionNet:
    """The IResNet-100 face net from a ``.pth`` (weights_only) or ``.safetensors`` file; eval, frozen."""
    path = Path(path)
    tensors = strip_wrappers(read_tensors(path)[0])
    if is_uniid_keys(tensors):
        raise CheckpointError(
            f"{path} is a UniID checkpoint, not the face-recognition net: load it as the UniID weights and "
            "give the IResNet-100 backbone (e.g. glint360k r100 backbone.pth) as the face model"
        )
    foreign = foreign_kind(tensors)
    if foreign:
        raise CheckpointError(f"{path} is {foreign[0]}, not the IResNet-100 face-recognition net")
    if not is_face_net_keys(tensors):
        raise CheckpointError(
            f"{path} is not an insightface IResNet backbone (expected keys like conv1.weight, layer1.0.*, "
            f"fc.weight, features.*; found e.g. {_brief(list(tensors)[:_SHOWN])})"
        )
    blocks = face_net_blocks(tensors)
    if blocks != IRESNET100_BLOCKS:
        raise CheckpointError(
            f"{path} is an IResNet with {list(blocks)} blocks per stage; UniID was trained with IResNet-100 "
            f"({list(IRESNET100_BLOCKS)}, the Glint360K r100 backbone.pth): use that one"
        )
    with torch.device("meta"):
        net = FaceRecognitionNet(blocks)
    _check_fit(net, tensors, str(path), "IResNet-100")
    net.load_state_dict(_cast(tensors, dtype), strict=True, assign=True)
    return net.to(device).eval().requires_grad_(False)
