"""Decoupled cross-attention math shared by every front end (diffusers, ComfyUI, trainer).

``O_txt = attn(q, k, v)`` and ``O_ip = attn(q, k_ip, v_ip)`` use the same queries and heads; a rescaler
(uniid_core.rescaler: a registered strategy, its parameters and per-layer weights) combines them.
Nothing in the per-layer path forces a host-device sync. The strategy registry is re-exported here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UniIDError
from .rescaler import (
    BUILTIN_RESCALERS,
    NORM_EPS,
    Rescaler,
    Scale,
    add_rescale,
    get_rescaler,
    get_strategy,
    normalized_rescale,
    register_rescaler,
    rescaler_names,
    unregister_rescaler,
)

__all__ = [
    "BUILTIN_RESCALERS",
    "NORM_EPS",
    "IPKVCache",
    "Rescaler",
    "Scale",
    "add_rescale",
    "attention",
    "combine_identity",
    "decoupled_attention",
    "get_rescaler",
    "normalized_rescale",
    "project_ip",
    "region_mask_for_tokens",
    "register_rescaler",
    "rescaler_names",
    "unregister_rescaler",
]


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
    rescale: str | Rescaler = "normalized",
    layer: Hashable | None = None,
    region_mask: Tensor | None = None,
    head_layout: bool = False,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """The one combine rule of every front end: text attention + rescaled identity attention, (B, Lq, C).

    ``text_out``/``ip_out`` are (B, Lq, C), or (B, heads, Lq, C/heads) with ``head_layout`` (saves a
    copy for strategies registered with ``any_layout``). ``adapter_scale``: float or tensor broadcastable
    to (B, 1, 1), this layer's weight already folded in; ``region_mask`` (B|1, Lq, 1) multiplies it, so
    the adapter acts only inside the region (mask 0 gives the text attention unchanged). ``rescale`` is
    a strategy name or a Rescaler; ``params`` its parameter tensors (made from the Rescaler when not
    given; the hot paths pass them ready). The result has ``text_out``'s dtype, heads merged.
    """
    chosen = rescale if isinstance(rescale, Rescaler) else None
    strategy = get_strategy(rescale if chosen is None else chosen.strategy)
    if params is None and strategy.params:
        values = chosen.params if chosen is not None else tuple((p.name, p.default) for p in strategy.params)
        params = Rescaler(strategy.name, values).param_tensors(text_out.device)
    extra = params or {}
    scale = _scale_tensor(adapter_scale, region_mask, text_out)
    if not head_layout:
        return strategy.fn(text_out, ip_out, scale, layer, **extra).to(text_out.dtype)
    if strategy.any_layout:
        head_scale = scale.unsqueeze(1) if isinstance(scale, Tensor) else scale
        return _merge_heads(strategy.fn(text_out, ip_out, head_scale, layer, **extra)).to(text_out.dtype)
    merged = strategy.fn(_merge_heads(text_out), _merge_heads(ip_out), scale, layer, **extra)
    return merged.to(text_out.dtype)


def decoupled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_ip: Tensor,
    v_ip: Tensor,
    heads: int,
    adapter_scale: Scale,
    rescale: str | Rescaler = "normalized",
    layer: Hashable | None = None,
    region_mask: Tensor | None = None,
    mask: Tensor | None = None,
    params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Text attention plus the rescaled identity attention, (B, Lq, C), before ``to_out``.

    ``adapter_scale``: float or tensor broadcastable to (B, 1, 1); ``region_mask`` (B, Lq, 1) multiplies
    the adapter term; ``mask`` is an optional attention mask for the text keys only. The two attentions
    are combined by ``combine_identity`` with ``rescale`` and ``params``.
    """
    qh = _split_heads(q, heads)
    text_h = F.scaled_dot_product_attention(
        qh, _split_heads(k, heads), _split_heads(v, heads), attn_mask=mask
    )
    ip_h = F.scaled_dot_product_attention(qh, _split_heads(k_ip, heads), _split_heads(v_ip, heads))
    combined = combine_identity(
        text_h, ip_h, adapter_scale, rescale, layer, region_mask, head_layout=True, params=params
    )
    return combined.to(q.dtype)


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
