"""Decoupled cross-attention math shared by every front end (diffusers, ComfyUI, trainer).

``O_txt = attn(q, k, v)`` and ``O_ip = attn(q, k_ip, v_ip)`` use the same queries and heads; a named
rescaler combines them. Built-ins: "normalized" (official per-row Frobenius rule with its epsilon rule)
and "add" (official plain addition). Nothing in the per-layer path forces a host-device sync.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UniIDError

Scale = float | Tensor
Rescaler = Callable[[Tensor, Tensor, Scale, Hashable | None], Tensor]

NORM_EPS = 1e-6
BUILTIN_RESCALERS = ("normalized", "add")


@dataclass(frozen=True)
class _Entry:
    fn: Rescaler
    any_layout: bool


_REGISTRY: dict[str, _Entry] = {}


def register_rescaler(name: str, fn: Rescaler, *, any_layout: bool = False) -> None:
    """Register ``fn(text_out, ip_out, scale, layer) -> combined`` under ``name`` (replaces an existing one).

    Tensors reach ``fn`` as (B, Lq, C); ``scale`` is a float or a float32 tensor (b, 1|Lq, 1) that
    broadcasts against them (per-row scales and region masks folded together).
    ``any_layout=True`` declares that ``fn`` only reduces per batch row (dim 0) over all other dims and
    is otherwise elementwise, so it may be given the (B, heads, Lq, C/heads) layout to save a copy.
    """
    if not callable(fn):
        raise UniIDError(f"rescaler {name!r} must be callable")
    _REGISTRY[name] = _Entry(fn, any_layout)


def unregister_rescaler(name: str) -> None:
    """Remove a custom rescaler (the built-ins "normalized" and "add" stay)."""
    if name in BUILTIN_RESCALERS:
        raise UniIDError(f"the built-in rescaler {name!r} cannot be removed")
    _REGISTRY.pop(name, None)


def rescaler_names() -> list[str]:
    """Registered rescalers: the official "normalized" first, then the others by name."""
    official = BUILTIN_RESCALERS[0]
    return [official, *sorted(name for name in _REGISTRY if name != official)]


def get_rescaler(name: str) -> Rescaler:
    """The rescaler registered under ``name``."""
    return _entry(name).fn


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UniIDError(f"unknown adapter rescaler {name!r}; registered: {sorted(_REGISTRY)}") from None


def _row_norms(x: Tensor) -> Tensor:
    """Frobenius norm of each batch row over all other dims, in float32 (or wider), shaped to broadcast."""
    dims = tuple(range(1, x.ndim))
    return torch.linalg.vector_norm(
        x, dim=dims, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32)
    )


def normalized_rescale(
    text_out: Tensor, ip_out: Tensor, scale: Scale, layer: Hashable | None = None
) -> Tensor:
    """Official rule: O_txt + s * (||O_txt|| / ||O_ip||) * O_ip, norms per batch row; +1e-6 if any tiny.

    The scalar factor is formed on the (B, 1, 1) norms, so the big tensors see one multiply and one add
    (unfused, rounding like the official code).
    """
    norm_txt = _row_norms(text_out)
    norm_ip = _row_norms(ip_out)
    factor = norm_txt / (norm_ip + (norm_ip.amin() < NORM_EPS) * NORM_EPS)
    if isinstance(scale, Tensor):
        factor = factor * scale.to(device=factor.device, dtype=torch.float32)
    else:
        factor = factor * float(scale)
    return text_out + ip_out * factor.to(text_out.dtype)


def add_rescale(text_out: Tensor, ip_out: Tensor, scale: Scale, layer: Hashable | None = None) -> Tensor:
    """Official plain rule: O_txt + s * O_ip."""
    if isinstance(scale, Tensor):
        return text_out + ip_out * scale.to(device=text_out.device, dtype=text_out.dtype)
    return text_out + ip_out * float(scale)


register_rescaler("normalized", normalized_rescale, any_layout=True)
register_rescaler("add", add_rescale, any_layout=True)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    batch, length, channels = x.shape
    if channels % heads:
        raise UniIDError(f"width {channels} is not divisible by {heads} heads")
    return x.view(batch, length, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """Multi-head scaled dot-product attention on (B, L, C) inputs -> (B, Lq, C)."""
    out = F.scaled_dot_product_attention(
        _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads), attn_mask=mask
    )
    return _merge_heads(out).to(q.dtype)


def _row_scale(adapter_scale: Tensor, like: Tensor) -> Tensor:
    scale = adapter_scale.to(device=like.device, dtype=torch.float32)
    if scale.ndim <= 1:
        return scale.reshape(-1, 1, 1)
    if scale.ndim != 3:
        raise UniIDError(
            f"adapter scale of shape {tuple(scale.shape)}: give a float, a (B,) tensor or a (B, 1, 1) tensor"
        )
    return scale


def _scale_tensor(adapter_scale: Scale, region_mask: Tensor | None, like: Tensor) -> Scale:
    """Fold a per-row scale and an optional (B, Lq, 1) region mask into one (b, lq, 1) factor."""
    if region_mask is None:
        return _row_scale(adapter_scale, like) if isinstance(adapter_scale, Tensor) else float(adapter_scale)
    mask = region_mask.to(device=like.device, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask.unsqueeze(-1)
    if isinstance(adapter_scale, Tensor):
        return mask * _row_scale(adapter_scale, like)
    return mask * float(adapter_scale)


def combine_identity(
    text_out: Tensor,
    ip_out: Tensor,
    adapter_scale: Scale,
    rescale: str = "normalized",
    layer: Hashable | None = None,
    region_mask: Tensor | None = None,
    head_layout: bool = False,
) -> Tensor:
    """The one combine rule of every front end: text attention + rescaled identity attention, (B, Lq, C).

    ``text_out``/``ip_out`` are (B, Lq, C), or (B, heads, Lq, C/heads) with ``head_layout`` (saves a
    copy for rescalers registered with ``any_layout``). ``adapter_scale``: float or tensor broadcastable
    to (B, 1, 1); ``region_mask`` (B|1, Lq, 1) multiplies it, so the adapter acts only inside the region
    (mask 0 gives the text attention unchanged). The result has ``text_out``'s dtype, heads merged.
    """
    entry = _entry(rescale)
    scale = _scale_tensor(adapter_scale, region_mask, text_out)
    if not head_layout:
        return entry.fn(text_out, ip_out, scale, layer).to(text_out.dtype)
    if entry.any_layout:
        head_scale = scale.unsqueeze(1) if isinstance(scale, Tensor) else scale
        return _merge_heads(entry.fn(text_out, ip_out, head_scale, layer)).to(text_out.dtype)
    return entry.fn(_merge_heads(text_out), _merge_heads(ip_out), scale, layer).to(text_out.dtype)


def decoupled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_ip: Tensor,
    v_ip: Tensor,
    heads: int,
    adapter_scale: Scale,
    rescale: str = "normalized",
    layer: Hashable | None = None,
    region_mask: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Text attention plus the rescaled identity attention, (B, Lq, C), before ``to_out``.

    ``adapter_scale``: float or tensor broadcastable to (B, 1, 1); ``region_mask`` (B, Lq, 1) multiplies
    the adapter term; ``mask`` is an optional attention mask for the text keys only. The two attentions
    are combined by ``combine_identity``.
    """
    qh = _split_heads(q, heads)
    text_h = F.scaled_dot_product_attention(
        qh, _split_heads(k, heads), _split_heads(v, heads), attn_mask=mask
    )
    ip_h = F.scaled_dot_product_attention(qh, _split_heads(k_ip, heads), _split_heads(v_ip, heads))
    return combine_identity(text_h, ip_h, adapter_scale, rescale, layer, region_mask, head_layout=True).to(
        q.dtype
    )


def region_mask_for_tokens(mask: Tensor, num_tokens: int) -> Tensor:
    """Resize a spatial mask (H,W), (B,H,W) or (B,1,H,W) to a layer's token grid -> (B, Lq, 1).

    The grid is found by halving H and W (rounding up, like the UNet's strided convolutions) until it
    holds ``num_tokens`` cells, so a mask at latent or image resolution fits every attn2 layer.
    """
    grid = mask
    if grid.ndim == 2:
        grid = grid[None, None]
    elif grid.ndim == 3:
        grid = grid[:, None]
    height, width = grid.shape[-2:]
    for shift in range(12):
        rows, cols = -(-height // 2**shift), -(-width // 2**shift)
        if rows * cols == num_tokens:
            break
    else:
        raise UniIDError(
            f"a {height}x{width} region mask does not match a layer with {num_tokens} tokens; give the mask "
            "at the latent or image resolution of the generation"
        )
    if (rows, cols) != (height, width):
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def _version(t: Tensor) -> int | None:
    return None if t.is_inference() else t._version


def _token_key(tokens: Tensor) -> tuple:
    return (tokens.data_ptr(), tuple(tokens.shape), tuple(tokens.stride()), _version(tokens))


@dataclass
class _KVEntry:
    tokens: Tensor
    token_key: tuple
    weight_k: Tensor
    weight_v: Tensor
    weight_key: tuple
    k: Tensor
    v: Tensor


class IPKVCache:
    """Projects identity tokens through to_k_ip/to_v_ip once per (layer, device, dtype) and reuses them.

    An entry is reused while the same token tensor (same storage, shape, strides and version counter)
    and the same weight tensors (same objects and versions) are given; every check is host-side
    metadata, so the per-layer path never synchronises with the device. The entry keeps a reference to
    the tokens so their storage cannot be recycled for another tensor while cached. Pass the same token
    tensor object on every call (e.g. project positive and negative tokens as separate entries and
    concatenate the results per call); tokens changed in place under ``torch.inference_mode`` carry no
    version counter, so call ``clear()`` after such edits.
    """

    def __init__(self) -> None:
        self._store: dict[tuple, _KVEntry] = {}
        self.projections = 0

    def __deepcopy__(self, memo: dict) -> IPKVCache:
        return IPKVCache()

    def __getstate__(self) -> dict:
        return {"_store": {}, "projections": 0}

    def kv(
        self,
        layer: Hashable,
        tokens: Tensor,
        weight_k: Tensor,
        weight_v: Tensor,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(k_ip, v_ip), each (B, M, C), for tokens (B, M, D) and weights (C, D), cast to ``dtype``."""
        dtype = dtype or weight_k.dtype
        device = weight_k.device
        key = (layer, device, dtype)
        token_key = _token_key(tokens)
        weight_key = (_token_key(weight_k), _token_key(weight_v))
        entry = self._store.get(key)
        if (
            entry is not None
            and entry.weight_k is weight_k
            and entry.weight_v is weight_v
            and entry.weight_key == weight_key
            and entry.token_key == token_key
        ):
            return entry.k, entry.v
        with torch.no_grad():
            fused = torch.cat([weight_k, weight_v], dim=0).to(device=device, dtype=dtype)
            projected = torch.matmul(tokens.to(device=device, dtype=dtype), fused.t())
        k, v = (part.contiguous() for part in projected.split([weight_k.shape[0], weight_v.shape[0]], dim=-1))
        self._store[key] = _KVEntry(tokens, token_key, weight_k, weight_v, weight_key, k, v)
        self.projections += 1
        return k, v

    def clear(self) -> None:
        """Drop every cached projection (e.g. when the identity changes for good)."""
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def project_ip(tokens: Tensor, weight_k: Tensor, weight_v: Tensor) -> tuple[Tensor, Tensor]:
    """Uncached (k_ip, v_ip) with autograd (training path): one matmul for both projections."""
    fused = torch.cat([weight_k, weight_v], dim=0)
    projected = torch.matmul(tokens.to(dtype=fused.dtype, device=fused.device), fused.t())
    return projected.split([weight_k.shape[0], weight_v.shape[0]], dim=-1)
