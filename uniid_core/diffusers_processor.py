"""UniID decoupled cross-attention as a diffusers attention processor (trainer and standalone pipelines).

Official convention: the last M rows of ``encoder_hidden_states`` are the adapter tokens (identity
tokens for positive rows, the zero-feature tokens for negative rows); the rest is the text context.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .attention import IPKVCache, Scale, attention, decoupled_attention, project_ip, region_mask_for_tokens
from .errors import CheckpointError, ModelFamilyError, UniIDError
from .family import SDXL, diffusers_block_group, diffusers_cross_attn, get_family
from .rescaler import Rescaler, as_rescaler


def _linear_from(weight: Tensor) -> nn.Linear:
    """A bias-free nn.Linear that shares ``weight`` when it is already a Parameter."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().clone())
    return linear


class UniIDAttnProcessor(nn.Module):
    """attn2 processor: text attention + scaled identity attention through to_k_ip/to_v_ip, then to_out.

    The identity term is combined by ``rescaler`` (a uniid_core.rescaler.Rescaler, the same object the
    ComfyUI nodes pass); ``layer_weight`` is this layer's weight from it (set by ``set_rescaler``) and
    multiplies ``scale``; ``position`` (the layer's place in the official order) is what the strategy
    receives as its layer.
    """

    def __init__(
        self,
        to_k_ip: nn.Linear,
        to_v_ip: nn.Linear,
        num_tokens: int,
        scale: Scale = 1.0,
        rescale: str | Rescaler = "normalized",
        layer: Any = None,
        kv_cache: IPKVCache | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.num_tokens = int(num_tokens)
        self.scale = scale
        self.rescaler = as_rescaler(rescale)
        self.layer_weight = 1.0
        self.layer = layer if layer is not None else id(self)
        self.position = position
        self.kv_cache = kv_cache if kv_cache is not None else IPKVCache()
        self._region_mask: Tensor | None = None
        self._layer_masks: dict[int, Tensor] = {}
        self._params: tuple[Rescaler, torch.device, dict[str, Tensor]] | None = None

    def _param_tensors(self, device: torch.device) -> dict[str, Tensor]:
        """The rescaler's parameter tensors on ``device``, made once per rescaler and device."""
        cached = self._params
        if cached is None or cached[0] is not self.rescaler or cached[1] != device:
            cached = (self.rescaler, device, self.rescaler.param_tensors(device))
            self._params = cached
        return cached[2]

    def _weighted_scale(self) -> Scale:
        """The adapter scale times this layer's weight (a weight of 1 leaves the scale as it is)."""
        if self.layer_weight == 1.0:
            return self.scale
        if isinstance(self.scale, Tensor):
            return self.scale * self.layer_weight
        return float(self.scale) * self.layer_weight

    @property
    def region_mask(self) -> Tensor | None:
        """Optional spatial mask (H,W)/(B,H,W)/(B,1,H,W) or token mask (B,Lq,1) for the adapter term."""
        return self._region_mask

    @region_mask.setter
    def region_mask(self, mask: Tensor | None) -> None:
        self._region_mask = mask
        self._layer_masks = {}

    def _mask_for(self, num_tokens: int, like: Tensor) -> Tensor | None:
        mask = self._region_mask
        if mask is None:
            return None
        if mask.ndim == 3 and mask.shape[-1] == 1 and mask.shape[1] == num_tokens:
            return mask
        cached = self._layer_masks.get(num_tokens)
        if cached is None or cached.device != like.device:
            cached = region_mask_for_tokens(mask.to(like.device), num_tokens)
            self._layer_masks[num_tokens] = cached
        return cached

    def _identity_kv(self, tokens: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        weight_k, weight_v = self.to_k_ip.weight, self.to_v_ip.weight
        if torch.is_grad_enabled() and (
            weight_k.requires_grad or weight_v.requires_grad or tokens.requires_grad
        ):
            k, v = project_ip(tokens, weight_k, weight_v)
            return k.to(dtype), v.to(dtype)
        return self.kv_cache.kv(self.layer, tokens, weight_k, weight_v, dtype=dtype)

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """Same contract as diffusers' AttnProcessor2_0, with the adapter tokens at the end of the context."""
        if encoder_hidden_states is None:
            raise UniIDError("UniIDAttnProcessor is for cross-attention (attn2) layers only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        split = encoder_hidden_states.shape[1] - self.num_tokens
        if split <= 0:
            raise UniIDError(
                f"the cross-attention context has {encoder_hidden_states.shape[1]} rows, too few for "
                f"{self.num_tokens} adapter tokens: append the adapter tokens to the prompt embeddings"
            )
        text_context = encoder_hidden_states[:, :split]
        identity = encoder_hidden_states[:, split:]
        if attn.norm_cross:
            text_context = attn.norm_encoder_hidden_states(text_context)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, split, batch)
            mask = mask.view(batch, attn.heads, -1, mask.shape[-1])[..., :split]

        query = attn.to_q(hidden_states)
        key = attn.to_k(text_context)
        value = attn.to_v(text_context)
        if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
            raise UniIDError("attention layers with q/k normalisation are not SDXL cross-attention layers")
        scale = self._weighted_scale()
        if isinstance(scale, (int, float)) and scale == 0:
            hidden_states = attention(query, key, value, attn.heads, mask)
        else:
            k_ip, v_ip = self._identity_kv(identity, query.dtype)
            hidden_states = decoupled_attention(
                query,
                key,
                value,
                k_ip,
                v_ip,
                attn.heads,
                scale,
                self.rescaler,
                self.layer if self.position is None else self.position,
                self._mask_for(query.shape[1], query),
                mask,
                self._param_tensors(query.device),
            )

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        if attn.rescale_output_factor != 1.0:
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


def _ip_linears(model: Any) -> list[tuple[nn.Linear, nn.Linear]]:
    branch = getattr(model, "adapter_branch", None)
    if branch is None:
        raise UniIDError(
            "this UniID model has no adapter branch; load the adapter weights to install processors"
        )
    modules = getattr(branch, "adapter_modules", None)
    if modules is not None and all(hasattr(m, "to_k_ip") for m in modules.values()):
        ordered = sorted(modules.items(), key=lambda item: int(item[0]))
        return [(m.to_k_ip, m.to_v_ip) for _, m in ordered]
    return [(_linear_from(k), _linear_from(v)) for k, v in branch.ip_weights()]


def install_uniid_processors(
    unet: Any,
    model: Any,
    rescale: str | Rescaler = "normalized",
    scale: Scale = 1.0,
    kv_cache: IPKVCache | None = None,
) -> dict[str, Any]:
    """Put a UniIDAttnProcessor on every attn2 of a diffusers UNet (ascending official index order).

    ``rescale``: a strategy name or a Rescaler (its layer weights are resolved here). Returns the full
    processor dict that was installed (self-attention processors unchanged).
    """
    linears = _ip_linears(model)
    num_tokens = int(model.config.num_adapter_tokens)
    processors = dict(unet.attn_processors)
    cross = diffusers_cross_attn(unet)
    if len(cross) != len(linears):
        family = get_family(getattr(model.config, "family", SDXL.name))
        raise ModelFamilyError(
            f"the UNet has {len(cross)} cross-attention layers but the UniID adapter has {len(linears)}; "
            "UniID weights only fit the UNet family they were trained for "
            f"({family.title}: {len(family.cross_attn_layers)} layers)"
        )
    cache = kv_cache if kv_cache is not None else IPKVCache()
    for index, ((_, name, attn), (to_k_ip, to_v_ip)) in enumerate(zip(cross, linears, strict=True)):
        width, context = attn.to_k.out_features, attn.to_k.in_features
        for label, linear in (("to_k_ip", to_k_ip), ("to_v_ip", to_v_ip)):
            if tuple(linear.weight.shape) != (width, context):
                raise CheckpointError(
                    f"{label} of adapter layer {index} has shape {tuple(linear.weight.shape)} but UNet layer "
                    f"{name} needs ({width}, {context}); the adapter was trained for another base model"
                )
        key = f"{name}.processor"
        processors[key] = UniIDAttnProcessor(
            to_k_ip, to_v_ip, num_tokens, scale=scale, layer=key, kv_cache=cache, position=index
        )
    unet.set_attn_processor(dict(processors))  # diffusers empties the dict it is given
    set_rescaler(unet, rescale)
    return processors


def uniid_processors(unet: Any) -> list[UniIDAttnProcessor]:
    """The UniID processors installed on ``unet``, in diffusers order."""
    return [p for p in unet.attn_processors.values() if isinstance(p, UniIDAttnProcessor)]


def set_rescaler(unet: Any, rescale: str | Rescaler) -> None:
    """Combine every installed UniID processor's identity term with ``rescale`` (a name or a Rescaler).

    The per-layer weights are resolved from the layers' block groups in official order, so a spec such
    as 'middle:0.5' or '0-3:0' means the same layers here as in ComfyUI.
    """
    rescaler = as_rescaler(rescale)
    cross = diffusers_cross_attn(unet)
    weights = rescaler.layer_weights([diffusers_block_group(name) for _, name, _ in cross])
    for (_, _, module), weight in zip(cross, weights, strict=True):
        processor = module.processor
        if isinstance(processor, UniIDAttnProcessor):
            processor.rescaler = rescaler
            processor.layer_weight = weight


def set_adapter_scale(unet: Any, scale: Scale) -> None:
    """Set the adapter scale (float or per-row tensor) of every installed UniID processor."""
    processors = uniid_processors(unet)
    if not processors:
        raise UniIDError(
            "no UniID processors are installed on this UNet; call install_uniid_processors first"
        )
    for processor in processors:
        processor.scale = scale
