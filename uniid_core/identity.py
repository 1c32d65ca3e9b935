"""Identity encoding: aligned faces -> UniID text and adapter tokens, as a small saveable value object."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor

from .errors import CheckpointError, IdentityMismatchError, UniIDError
from .models.iresnet import FaceRecognitionNet
from .models.uniid import UniIDModel
from .weights_file import atomic_write, read_safetensors

if TYPE_CHECKING:
    from .anchor import TextAnchor

IDENTITY_FORMAT = "uniid-identity"
IDENTITY_VERSION = 1
COMBINE_MODES = ("mean_features", "mean_tokens")
_TENSOR_FIELDS = ("text_tokens", "text_tokens_rescaled", "adapter_tokens", "face_embedding")


@dataclass(eq=False)  # tensor fields: compare identities field by field, not with ==
class Identity:
    """One person's UniID tokens: raw text (1, N, 2048), anchor-rescaled text, adapter (1, M, 2048).

    ``face_embedding`` (1, 512): the references' unit face-net embeddings averaged and renormalised, for
    similarity scoring (uniid_core.similarity); None in identities saved before it existed.
    """

    text_tokens: Tensor | None = None
    text_tokens_rescaled: Tensor | None = None
    adapter_tokens: Tensor | None = None
    class_word: str = "person"
    model_fingerprint: str = ""
    num_references: int = 1
    face_embedding: Tensor | None = None

    def with_anchor(self, anchor: TextAnchor) -> Identity:
        """Copy whose ``text_tokens_rescaled`` are the raw text tokens rescaled to ``anchor``'s norms."""
        if self.text_tokens is None:
            return replace(self, text_tokens_rescaled=None)
        return replace(self, text_tokens_rescaled=anchor.rescale(self.text_tokens))

    def text_tokens_for_prompt(self) -> Tensor:
        """The tokens to splice into the prompt: rescaled when an anchor was applied, else raw."""
        tokens = self.text_tokens_rescaled if self.text_tokens_rescaled is not None else self.text_tokens
        if tokens is None:
            raise UniIDError(
                "this identity has no text tokens (it was encoded without a text branch); load UniID weights "
                "that include the text branch and encode the face again"
            )
        return tokens

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Identity:
        """Copy with every token tensor moved to ``device`` and/or cast to ``dtype``."""
        moved = {
            name: getattr(self, name).to(device=device, dtype=dtype)
            for name in _TENSOR_FIELDS
            if getattr(self, name) is not None
        }
        return replace(self, **moved)


def encode_identity(
    model: UniIDModel,
    face_net: FaceRecognitionNet,
    faces: Tensor,
    class_word: str = "person",
    combine: str = "mean_features",
) -> Identity:
    """Encode aligned faces ``(R, 3, 112, 112)`` in [-1, 1] into one Identity.

    With several references, ``combine="mean_features"`` (default) averages the face-net embedding and
    stage maps over the references and runs the branches once: both branches end in a LayerNorm, so the
    tokens keep the scale they were trained with. ``"mean_tokens"`` runs the branches per reference and
    averages their outputs; where the references disagree the average is shorter than any single
    reference's tokens, which weakens the identity under the plain-add adapter mode (and is undone for the
    text tokens only by the anchor rescaling). With R = 1 both modes are exactly the official computation.
    """
    if combine not in COMBINE_MODES:
        raise UniIDError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    if faces.dim() == 3:
        faces = faces.unsqueeze(0)
    if faces.dim() != 4 or tuple(faces.shape[1:]) != (3, 112, 112) or faces.shape[0] < 1:
        raise UniIDError(
            f"faces must be aligned 112x112 RGB crops shaped (R, 3, 112, 112), got {tuple(faces.shape)}; "
            "align them first (uniid_core.face)"
        )
    if not faces.is_floating_point() or float(faces.detach().abs().max()) > 1.0 + 1e-3:
        raise UniIDError("faces must be float tensors scaled to [-1, 1] ((x / 255 - 0.5) / 0.5)")
    net_param = next(face_net.parameters())
    model_param = next(model.parameters())
    with torch.no_grad():
        features = face_net(faces.to(device=net_param.device, dtype=net_param.dtype))
        face_embedding = _unit_mean(features.embedding).to(model_param.device)
        features = features.to(device=model_param.device, dtype=model_param.dtype)
        if combine == "mean_features":
            text, adapter = model(features.mean())
        else:
            text, adapter = (_mean_tokens(t) for t in model(features))
    return Identity(
        text_tokens=text,
        adapter_tokens=adapter,
        class_word=class_word,
        model_fingerprint=model.fingerprint,
        num_references=int(faces.shape[0]),
        face_embedding=face_embedding,
    )


def _unit_mean(embedding: Tensor) -> Tensor:
    """(R, D) embeddings -> (1, D) float32: the mean of the unit rows, renormalised."""
    unit = torch.nn.functional.normalize(embedding.float(), dim=-1)
    return torch.nn.functional.normalize(unit.mean(dim=0, keepdim=True), dim=-1)


def _mean_tokens(tokens: Tensor | None) -> Tensor | None:
    if tokens is None:
        return None
    return tokens.float().mean(dim=0, keepdim=True).to(tokens.dtype)


def check_identity_matches(identity: Identity, model: UniIDModel) -> None:
    """Raise IdentityMismatchError when ``identity`` was not encoded by ``model``'s weights."""
    if identity.model_fingerprint and model.fingerprint and identity.model_fingerprint != model.fingerprint:
        raise IdentityMismatchError(
            f"this identity was encoded with other UniID weights (fingerprint {identity.model_fingerprint}, "
            f"loaded weights {model.fingerprint}); encode the face again with the loaded UniID model"
        )
    config = model.config
    checks = (
        ("text", identity.text_tokens, model.text_branch is not None, config.num_text_tokens),
        ("adapter", identity.adapter_tokens, model.adapter_branch is not None, config.num_adapter_tokens),
    )
    for name, tokens, has_branch, count in checks:
        if has_branch and tokens is None:
            raise IdentityMismatchError(
                f"the loaded UniID model has a {name} branch but the identity has no {name} tokens; "
                "encode the face again with the loaded UniID model"
            )
        if has_branch and tokens is not None and tokens.shape[-2] != count:
            raise IdentityMismatchError(
                f"the identity has {tokens.shape[-2]} {name} tokens but the loaded UniID model makes "
                f"{count}; "
                "encode the face again with the loaded UniID model"
            )


def save_identity(identity: Identity, path: str | os.PathLike) -> Path:
    """Write an identity as safetensors with string metadata, atomically; returns the path."""
    path = Path(path)
    tensors = {
        name: getattr(identity, name).detach().to("cpu").contiguous()
        for name in _TENSOR_FIELDS
        if getattr(identity, name) is not None
    }
    if not tensors:
        raise UniIDError("this identity holds no tokens; nothing to save")
    metadata = {
        "format": IDENTITY_FORMAT,
        "format_version": str(IDENTITY_VERSION),
        "class_word": identity.class_word,
        "model_fingerprint": identity.model_fingerprint,
        "num_references": str(identity.num_references),
        "num_text_tokens": _count(tensors, "text_tokens"),
        "num_adapter_tokens": _count(tensors, "adapter_tokens"),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _count(tensors: dict[str, Tensor], name: str) -> str:
    return str(tensors[name].shape[-2]) if name in tensors else "0"


def load_identity(path: str | os.PathLike) -> Identity:
    """Read an identity written by ``save_identity``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such identity file")
    try:
        tensors, metadata = read_safetensors(path)
    except Exception as exc:  # the Rust reader raises SafetensorError for every kind of damage
        raise CheckpointError(f"{path} is not a readable identity file ({exc}); save it again") from exc
    if metadata.get("format") != IDENTITY_FORMAT:
        raise CheckpointError(f"{path} is not a UniID identity file (as written by save_identity)")
    version = _metadata_int(path, metadata, "format_version", 0)
    if version > IDENTITY_VERSION:
        raise CheckpointError(
            f"{path} uses identity format {version}, newer than this code reads ({IDENTITY_VERSION}); "
            "update the node pack"
        )
    return Identity(
        text_tokens=tensors.get("text_tokens"),
        text_tokens_rescaled=tensors.get("text_tokens_rescaled"),
        adapter_tokens=tensors.get("adapter_tokens"),
        class_word=metadata.get("class_word", "person"),
        model_fingerprint=metadata.get("model_fingerprint", ""),
        num_references=_metadata_int(path, metadata, "num_references", 1),
        face_embedding=tensors.get("face_embedding"),
    )


def _metadata_int(path: Path, metadata: dict[str, str], key: str, default: int) -> int:
    """A whole-number metadata field, or a CheckpointError naming the file and the damaged field."""
    raw = metadata.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise CheckpointError(
            f"{path}: damaged identity metadata ({key}={raw!r} is not a whole number); save the identity "
            "again from its photos"
        ) from exc
