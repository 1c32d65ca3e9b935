"""Identity encoding: aligned faces -> UniID text and adapter tokens, as a small saveable value object."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor

from .errors import CheckpointError, IdentityMismatchError, UniIDError
from .face.class_word import DEFAULT_CLASS_WORD
from .models.iresnet import FaceRecognitionNet
from .models.uniid import UniIDModel
from .weights_file import atomic_write, read_safetensors

if TYPE_CHECKING:
    from .anchor import TextAnchor

IDENTITY_FORMAT = "uniid-identity"
IDENTITY_VERSION = 2
"""Newest file format read: 2 holds an identity batch; a single identity is still written as 1, so
packs that only know format 1 keep reading it (and refuse a batch with an "update" message)."""
SINGLE_IDENTITY_VERSION = 1
PER_IMAGE = "per_image"
COMBINE_MODES = ("mean_features", "mean_tokens", PER_IMAGE)
_TENSOR_FIELDS = ("text_tokens", "text_tokens_rescaled", "adapter_tokens", "face_embedding")


@dataclass(eq=False)  # tensor fields: compare identities field by field, not with ==
class Identity:
    """One person's UniID tokens: raw text (1, N, 2048), anchor-rescaled text, adapter (1, M, 2048).

    ``face_embedding`` (1, 512): the references' unit face-net embeddings averaged and renormalised, for
    similarity scoring (uniid_core.similarity); None in identities saved before it existed.

    An identity batch holds n identities along the first dimension of every tensor ((n, N, 2048),
    (n, 512), ...): identity i is meant for latent i of a batch (``count``, ``stack_identities``).
    ``num_references`` is then the number of photos behind all of them.
    """

    text_tokens: Tensor | None = None
    text_tokens_rescaled: Tensor | None = None
    adapter_tokens: Tensor | None = None
    class_word: str = "person"
    model_fingerprint: str = ""
    num_references: int = 1
    face_embedding: Tensor | None = None

    @property
    def count(self) -> int:
        """How many identities this holds: 1 for one person, n for an identity batch."""
        tensors = [getattr(self, name) for name in _TENSOR_FIELDS]
        sizes = {int(t.shape[0]) for t in tensors if t is not None}
        if len(sizes) > 1:
            raise UniIDError(
                f"this identity's tensors disagree on how many identities it holds ({sorted(sizes)}); "
                "encode or stack the identities again"
            )
        return sizes.pop() if sizes else 1

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
    """Encode aligned faces ``(R, 3, 112, 112)`` in [-1, 1] into one Identity (or, per image, R of them).

    With several references, ``combine="mean_features"`` (default) averages the face-net embedding and
    stage maps over the references and runs the branches once: both branches end in a LayerNorm, so the
    tokens keep the scale they were trained with. ``"mean_tokens"`` runs the branches per reference and
    averages their outputs; where the references disagree the average is shorter than any single
    reference's tokens, which weakens the identity under the plain-add adapter mode (and is undone for the
    text tokens only by the anchor rescaling). ``"per_image"`` makes an identity batch: one identity per
    face, in input order (each computed as the official code computes one reference). With R = 1 every
    mode is exactly the official computation.
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
        if combine == PER_IMAGE:
            face_embedding = torch.nn.functional.normalize(features.embedding.float(), dim=-1)
        else:
            face_embedding = _unit_mean(features.embedding)
        face_embedding = face_embedding.to(model_param.device)
        features = features.to(device=model_param.device, dtype=model_param.dtype)
        if combine == "mean_features":
            text, adapter = model(features.mean())
        elif combine == PER_IMAGE:
            text, adapter = model(features)
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


def stack_identities(identities: Sequence[Identity]) -> Identity:
    """One identity batch from identities (each one person or itself a batch), in order.

    All must come from the same UniID weights and carry the same kinds of tokens. Anchor-rescaled text
    tokens and face embeddings are kept only when every part has them (UniID Apply rescales the text
    tokens again from CLIP). The class word is the parts' common one, else "person".
    """
    if not identities:
        raise UniIDError("an identity batch needs at least one identity")
    fingerprints = {i.model_fingerprint for i in identities if i.model_fingerprint}
    if len(fingerprints) > 1:
        raise IdentityMismatchError(
            "these identities were encoded with different UniID weights "
            f"(fingerprints {', '.join(sorted(fingerprints))}); encode every face with the same UniID model "
            "before batching them"
        )
    fields: dict[str, Tensor | None] = {}
    for name in _TENSOR_FIELDS:
        parts = [getattr(i, name) for i in identities]
        present = [p for p in parts if p is not None]
        if name in ("text_tokens", "adapter_tokens") and present and len(present) != len(parts):
            kind = name.split("_")[0]
            raise IdentityMismatchError(
                f"some of these identities have {kind} tokens and some do not; encode every face with the "
                "same UniID model before batching them"
            )
        if len(present) != len(parts):
            fields[name] = None
            continue
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise IdentityMismatchError(
                f"these identities' {name} have different shapes {sorted(shapes)}; encode every face with "
                "the same UniID model before batching them"
            )
        fields[name] = torch.cat([p.detach().to("cpu", torch.float32) for p in parts], 0)
    words = {i.class_word for i in identities}
    return Identity(
        **fields,
        class_word=words.pop() if len(words) == 1 else DEFAULT_CLASS_WORD,
        model_fingerprint=fingerprints.pop() if fingerprints else "",
        num_references=sum(i.num_references for i in identities),
    )


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
    count = identity.count
    metadata = {
        "format": IDENTITY_FORMAT,
        "format_version": str(SINGLE_IDENTITY_VERSION if count == 1 else IDENTITY_VERSION),
        "num_identities": str(count),
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
    identity = Identity(
        text_tokens=tensors.get("text_tokens"),
        text_tokens_rescaled=tensors.get("text_tokens_rescaled"),
        adapter_tokens=tensors.get("adapter_tokens"),
        class_word=metadata.get("class_word", "person"),
        model_fingerprint=metadata.get("model_fingerprint", ""),
        num_references=_metadata_int(path, metadata, "num_references", 1),
        face_embedding=tensors.get("face_embedding"),
    )
    sizes = {name: int(t.shape[0]) for name, t in tensors.items() if name in _TENSOR_FIELDS}
    expected = _metadata_int(path, metadata, "num_identities", 1)
    if any(size != expected for size in sizes.values()):
        raise CheckpointError(
            f"{path}: damaged identity file (it says {expected} identit{'y' if expected == 1 else 'ies'} but "
            f"its tensors hold {sizes}); save the identity again from its photos"
        )
    return identity


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
