"""Celebrity-name norm anchor: per-token target norms for the text-branch identity tokens.

For each CLIP tower the names are tokenized (no BOS/EOS, no padding), sub-token column j is averaged
over the names that have a j-th sub-token, and ``[BOS, mu_1..mu_N, EOS, PAD...]`` is encoded with
position embeddings and the causal mask; the anchor norms are the L2 norms of the penultimate hidden
state at positions 1..N. Identity tokens are then rescaled per token to these norms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import UniIDError
from .family import SDXL

DATA_DIR = Path(__file__).resolve().parent / "data"
OFFICIAL_NAMES_PATH = DATA_DIR / "wiki_names_v2.txt"
PROJECT_NAMES_PATH = DATA_DIR / "celebrity_names.txt"
DEFAULT_NAMES_PATH = OFFICIAL_NAMES_PATH
BUILTIN_NAMES = {"official": OFFICIAL_NAMES_PATH, "uniid_project": PROJECT_NAMES_PATH}
"""Names lists shipped with the project: the official one (default) and the project's own."""


@runtime_checkable
class AnchorTower(Protocol):
    """What the anchor needs from one CLIP text tower."""

    token_embedding: Tensor
    bos_id: int
    eos_id: int
    pad_id: int

    def tokenize(self, name: str) -> list[int]:
        """Token ids of ``name`` without BOS/EOS and without padding."""
        ...

    def penultimate(self, inputs_embeds: Tensor) -> Tensor:
        """Penultimate-layer hidden states (1, 77, d) for input embeddings (1, 77, d)."""
        ...


@dataclass
class TextAnchor:
    """Per-token anchor norms for the two SDXL towers (CLIP-L half, then OpenCLIP-G half)."""

    norms_l: Tensor
    norms_g: Tensor
    widths: tuple[int, int] = SDXL.text_widths

    @property
    def num_tokens(self) -> int:
        """Number of identity tokens the anchor covers."""
        return int(self.norms_l.shape[0])

    def rescale(self, tokens: Tensor) -> Tensor:
        """Rescale tokens (B, N, d_l + d_g) so token j of each half has the anchor norm a_j."""
        if tokens.shape[-2] != self.num_tokens:
            raise UniIDError(
                f"the text anchor covers {self.num_tokens} tokens but the identity has {tokens.shape[-2]}; "
                "recompute the anchor with num_tokens equal to the text branch's token count"
            )
        if tokens.shape[-1] != sum(self.widths):
            raise UniIDError(
                f"identity tokens are {tokens.shape[-1]} wide but the anchor was made for text towers of "
                f"widths {self.widths}; use the anchor of the base model's own text encoders"
            )
        first, second = tokens[..., : self.widths[0]], tokens[..., self.widths[0] :]
        norms_l = self.norms_l.to(device=tokens.device, dtype=tokens.dtype).unsqueeze(-1)
        norms_g = self.norms_g.to(device=tokens.device, dtype=tokens.dtype).unsqueeze(-1)
        first = first / torch.linalg.vector_norm(first, dim=-1, keepdim=True) * norms_l
        second = second / torch.linalg.vector_norm(second, dim=-1, keepdim=True) * norms_g
        return torch.cat([first, second], dim=-1)


def column_means(tower: AnchorTower, names: Sequence[str], num_tokens: int) -> Tensor:
    """Mean input embedding of name sub-token columns 1..N over the names that have that column (N, d)."""
    table = tower.token_embedding
    sums = torch.zeros(num_tokens, table.shape[1], dtype=torch.float64, device=table.device)
    counts = [0] * num_tokens
    for name in names:
        ids = tower.tokenize(name)[:num_tokens]
        if not ids:
            continue
        rows = table[torch.tensor(ids, device=table.device)].double()
        sums[: len(ids)] += rows
        for j in range(len(ids)):
            counts[j] += 1
    if min(counts) == 0:
        raise UniIDError(
            f"no name in the list has {num_tokens} sub-tokens, so anchor column {counts.index(0) + 1} is "
            "undefined; use a names file with longer (multi-word) names"
        )
    count = torch.tensor(counts, dtype=torch.float64, device=table.device).unsqueeze(-1)
    return (sums / count).to(table.dtype)


def anchor_hidden(tower: AnchorTower, means: Tensor) -> Tensor:
    """Penultimate hidden states at positions 1..N for [BOS, means, EOS, PAD...] (N, d)."""
    n = means.shape[0]
    length = SDXL.chunk
    if n + 2 > length:
        raise UniIDError(f"{n} identity tokens do not fit a {length}-token CLIP context")
    table = tower.token_embedding
    ids = torch.tensor([tower.bos_id, tower.eos_id, tower.pad_id], device=table.device)
    bos, eos, pad = table[ids].unbind(0)
    seq = torch.cat(
        [bos[None], means.to(table.dtype), eos[None], pad[None].expand(length - n - 2, -1)], dim=0
    )
    with torch.no_grad():
        hidden = tower.penultimate(seq.unsqueeze(0))
    return hidden[0, 1 : n + 1]


def compute_anchor(towers: Sequence[AnchorTower], names: list[str], num_tokens: int) -> TextAnchor:
    """Anchor norms of both towers for ``names`` and ``num_tokens`` identity tokens."""
    if len(towers) != 2:
        raise UniIDError(f"the SDXL anchor needs exactly two text towers, got {len(towers)}")
    if not names:
        raise UniIDError("the celebrity names list is empty; give a file with one name per line")
    norms = []
    for tower in towers:
        hidden = anchor_hidden(tower, column_means(tower, names, num_tokens))
        norms.append(torch.linalg.vector_norm(hidden.float(), dim=-1).cpu())
    widths = (int(towers[0].token_embedding.shape[1]), int(towers[1].token_embedding.shape[1]))
    return TextAnchor(norms_l=norms[0], norms_g=norms[1], widths=widths)


def names_path(choice: str | Path | None = None) -> Path:
    """The file behind a names choice: None or "official", "uniid_project", or a path to a UTF-8 file."""
    if choice is None:
        return DEFAULT_NAMES_PATH
    if isinstance(choice, str) and choice in BUILTIN_NAMES:
        return BUILTIN_NAMES[choice]
    return Path(choice).expanduser()


def load_names(path: str | Path | None = None) -> list[str]:
    """Names from a UTF-8 file, one per line (blank lines and '#' comments ignored); default: official."""
    source = names_path(path)
    if not source.is_file():
        raise UniIDError(
            f"celebrity names file not found: {source} (give a UTF-8 file with one name per line, or one "
            f"of the built-in lists: {', '.join(BUILTIN_NAMES)})"
        )
    lines = source.read_text(encoding="utf-8").splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise UniIDError(f"celebrity names file {source} holds no names")
    return names


def names_digest(names: Sequence[str]) -> str:
    """Short sha256 of a names list (as used for the anchor), to record which list made an image."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def _text_transformer(text_encoder: Any) -> Any:
    """The module holding embeddings/encoder for a transformers CLIP text model (any version)."""
    return getattr(text_encoder, "text_model", text_encoder)


@dataclass
class _TransformersTower:
    """AnchorTower over a transformers CLIPTextModel(/WithProjection) and its CLIPTokenizer."""

    text_encoder: Any
    tokenizer: Any
    pad_id: int

    @property
    def token_embedding(self) -> Tensor:
        return _text_transformer(self.text_encoder).embeddings.token_embedding.weight

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def tokenize(self, name: str) -> list[int]:
        return list(self.tokenizer(name, add_special_tokens=False, truncation=False).input_ids)

    def penultimate(self, inputs_embeds: Tensor) -> Tensor:
        model = _text_transformer(self.text_encoder)
        hidden = model.embeddings(inputs_embeds=inputs_embeds)
        length = hidden.shape[1]
        mask = torch.full(
            (length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device
        )
        mask = torch.triu(mask, diagonal=1)[None, None]
        layers = model.encoder.layers
        for layer in layers[: len(layers) - 1]:
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden


def transformers_tower(text_encoder: Any, tokenizer: Any, pad_id: int) -> AnchorTower:
    """AnchorTower for a transformers CLIP text encoder + CLIPTokenizer (``pad_id``: the family's pad_ids)."""
    return _TransformersTower(text_encoder=text_encoder, tokenizer=tokenizer, pad_id=int(pad_id))


def text_encoder_fingerprint(modules: Sequence[Any]) -> str:
    """Cheap identity of text-encoder weights: shapes plus a strided sample of a few tensors' values."""
    digest = hashlib.sha256()
    for module in modules:
        params = list(module.parameters()) if hasattr(module, "parameters") else [module]
        digest.update(str(len(params)).encode())
        picks = {0, len(params) // 2, len(params) - 1} if params else set()
        for index, param in enumerate(params):
            digest.update(str(tuple(param.shape)).encode())
            if index in picks:
                flat = param.detach().reshape(-1)
                step = max(1, flat.numel() // 4096)
                sample = flat[::step][:4096].float().cpu().contiguous()
                digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:24]


class AnchorCache:
    """Memoises anchors per (text-encoder weights fingerprint, names, token count)."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str, int], TextAnchor] = {}

    def get(
        self, towers: Sequence[AnchorTower], names: list[str], num_tokens: int, fingerprint: str | None = None
    ) -> TextAnchor:
        """Cached anchor, computed on first use.

        ``fingerprint`` defaults to a sample of the towers' weights (the whole text encoder for
        transformers towers, the token-embedding table otherwise); front ends whose towers wrap other
        encoders can pass their own stable fingerprint.
        """
        if fingerprint is None:
            fingerprint = text_encoder_fingerprint(
                [getattr(tower, "text_encoder", tower.token_embedding) for tower in towers]
            )
        key = (fingerprint, names_digest(names), int(num_tokens))
        cached = self._store.get(key)
        if cached is None:
            cached = self._store[key] = compute_anchor(towers, names, num_tokens)
        return cached

    def clear(self) -> None:
        """Forget every cached anchor."""
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)
