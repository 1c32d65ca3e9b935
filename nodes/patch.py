"""The UniID attn2 replace patch and the apply-model wrapper that sets per-call scales.

One ``UniIDPatchState`` per Apply holds the identity's tokens and settings; 70 ``UniIDAttn2Replace``
objects (one per cross-attention layer) share it. The APPLY_MODEL wrapper runs once per model call:
it picks the merge-schedule scales from the row sigmas (``sigma > sample_sigmas[merge_step]``), scales
the spliced text-token rows of the context found by equality, and hands per-call tensors to the layers
through ``transformer_options``. Nothing here forces a host-device sync.
"""

from __future__ import annotations

import copy
import math
import threading
import uuid
from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
import torch.nn.functional as F

from uniid_core.attention import get_rescaler, project_ip
from uniid_core.schedule import MergeSchedule

NEGATIVE, POSITIVE = 1, 0


@dataclass
class CallInfo:
    """Per model call: which token set each row uses (and a hashable key of it), the adapter scale per row."""

    rows: torch.Tensor
    rows_key: tuple
    adapter_scale: torch.Tensor


class UniIDPatchState:
    """Shared, read-only-after-build state of one applied identity (tokens, weights, schedule, caches)."""

    def __init__(
        self,
        *,
        adapter_tokens: torch.Tensor | None,
        negative_tokens: torch.Tensor | None,
        text_tokens: torch.Tensor | None,
        ip_patcher: object | None,
        schedule: MergeSchedule,
        rescale: str,
        sigma_start: float,
        sigma_end: float,
        mask: torch.Tensor | None = None,
    ) -> None:
        self.key = f"uniid_{uuid.uuid4().hex[:12]}"
        self.tokens = None
        if adapter_tokens is not None:
            self.tokens = torch.cat([adapter_tokens[:1], negative_tokens[:1].to(adapter_tokens)], 0).detach()
        self.text_tokens = (
            None if text_tokens is None else text_tokens.detach().reshape(-1, text_tokens.shape[-1])
        )
        self.ip_patcher = ip_patcher
        self.schedule = schedule
        self.rescale = rescale
        self.rescaler = get_rescaler(rescale)
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self.mask = None if mask is None else mask.detach().float().cpu().reshape(-1, *mask.shape[-2:])
        self._cache: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> UniIDPatchState:
        return self

    def _cached(self, key: tuple, make) -> torch.Tensor:
        value = self._cache.get(key)
        if value is None:
            value = make()
            with self._lock:
                self._cache[key] = value
        return value

    def models(self) -> list:
        """ModelPatchers ComfyUI must load with the UNet (the ip projections)."""
        return [] if self.ip_patcher is None else [self.ip_patcher]

    def kv(self, layer: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_ip, v_ip) of shape (2, M, C) for [positive, negative] tokens of ``layer``, projected once.

        The projection runs where ComfyUI put the ip weights; only the small K/V are kept, so the
        weights themselves stay under ComfyUI's memory management (no cached copies of them).
        """

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            module = self.ip_patcher.model
            with torch.no_grad():
                k, v = project_ip(self.tokens, module.to_k_ip[layer], module.to_v_ip[layer])
            return k.to(device, dtype).contiguous(), v.to(device, dtype).contiguous()

        return self._cached(("kv_all", layer, device, dtype), make)

    def kv_rows(self, layer: int, info: CallInfo, device: torch.device, dtype: torch.dtype) -> tuple:
        """(k_ip, v_ip) already gathered for this call's rows, (B, M, C) each; cached per row layout."""

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            k_all, v_all = self.kv(layer, device, dtype)
            return k_all.index_select(0, info.rows), v_all.index_select(0, info.rows)

        return self._cached(("kv", layer, info.rows_key, device, dtype), make)

    def rows_for(self, cond_or_uncond: list[int], batch: int, device: torch.device) -> torch.Tensor:
        """Token-set index per batch row: 0 (identity) for cond chunks, 1 (negative) for uncond chunks."""
        kinds = tuple(cond_or_uncond) or (POSITIVE,)

        def make() -> torch.Tensor:
            per = max(1, batch // len(kinds))
            rows = [1 if kind == NEGATIVE else 0 for kind in kinds for _ in range(per)]
            rows = (rows + rows[-1:] * batch)[:batch]
            return torch.tensor(rows, dtype=torch.long).to(device)

        return self._cached(("rows", kinds, batch, device), make)

    def _scale(self, at_sigma, sigma: torch.Tensor, sample_sigmas: torch.Tensor | None, after: float):
        """Per-row float32 scale from the core schedule; without sample_sigmas (a caller outside
        ComfyUI's samplers) the "after" scale applies."""
        if sample_sigmas is None:
            return torch.full_like(sigma, after, dtype=torch.float32)
        return at_sigma(sigma, sample_sigmas)

    def adapter_scale(self, sigma: torch.Tensor, sample_sigmas: torch.Tensor | None) -> torch.Tensor:
        """Adapter scale per row (B, 1, 1): merge schedule, zero outside [sigma_end, sigma_start]."""
        sigma = sigma.reshape(-1)
        schedule = self.schedule
        scale = self._scale(schedule.adapter_scale_at_sigma, sigma, sample_sigmas, schedule.adapter_after)
        active = (sigma <= self.sigma_start) & (sigma >= self.sigma_end)
        return (scale * active).reshape(-1, 1, 1)

    def scale_text_rows(
        self, context: torch.Tensor, sigma: torch.Tensor, sample_sigmas: torch.Tensor | None
    ) -> torch.Tensor:
        """Multiply the context rows equal to the spliced identity tokens by the text scale of their row."""
        if self.text_tokens is None or context is None:
            return context
        sigma = sigma.reshape(-1)
        scale = self._scale(self.schedule.text_scale_at_sigma, sigma, sample_sigmas, self.schedule.text_after)
        tokens = self._cached(
            ("text", context.device, context.dtype),
            lambda: self.text_tokens.to(context.device, context.dtype),
        )
        hit = (context.unsqueeze(2) == tokens).all(-1).any(-1)
        if scale.shape[0] != context.shape[0]:
            scale = scale[:1].expand(context.shape[0])
        factor = torch.where(
            hit,
            scale.to(context.dtype).unsqueeze(1),
            torch.ones((), dtype=context.dtype, device=context.device),
        )
        return context * factor.unsqueeze(-1)

    def region(
        self, length: int, original_shape: list[int], batch: int, device, dtype
    ) -> torch.Tensor | None:
        """The mask resized to this layer's token grid, (B or 1, length, 1), or None."""
        if self.mask is None:
            return None
        height, width = int(original_shape[-2]), int(original_shape[-1])
        while height * width > length and height > 1:
            height, width = math.ceil(height / 2), math.ceil(width / 2)

        def make() -> torch.Tensor:
            grid = F.interpolate(
                self.mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False
            )
            return grid.reshape(grid.shape[0], -1, 1).to(device, dtype)

        grid = self._cached(("mask", height, width, device, dtype), make)
        if grid.shape[0] not in (1, batch):
            grid = grid.repeat(math.ceil(batch / grid.shape[0]), 1, 1)[:batch]
        return grid


def _attention(q, k, v, extra_options: dict) -> torch.Tensor:
    """ComfyUI's configured attention (sub-quadratic, SDPA, xformers, sage or an override)."""
    return comfy_attention.optimized_attention(
        q,
        k,
        v,
        extra_options["n_heads"],
        attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options,
    )


class UniIDAttn2Replace:
    """attn2 replacement for one layer: text attention (or a previous patch) plus the rescaled UniID term."""

    def __init__(self, state: UniIDPatchState, layer: int, previous: object | None = None) -> None:
        self.state = state
        self.layer = layer
        self.previous = previous

    def __call__(self, q, k, v, extra_options: dict) -> torch.Tensor:
        if self.previous is not None:
            text_out = self.previous(q, k, v, extra_options)
        else:
            text_out = _attention(q, k, v, extra_options)
        info = extra_options.get(self.state.key)
        if info is None or self.state.tokens is None:
            return text_out
        k_ip, v_ip = self.state.kv_rows(self.layer, info, q.device, q.dtype)
        ip_out = _attention(q, k_ip, v_ip, extra_options)
        combined = self.state.rescaler(text_out, ip_out, info.adapter_scale, self.layer)
        region = self.state.region(
            q.shape[1], extra_options.get("original_shape", [1, 1, 1, 1]), q.shape[0], q.device, q.dtype
        )
        if region is not None:
            combined = torch.lerp(text_out, combined, region)
        return combined.to(text_out.dtype)

    def __deepcopy__(self, memo: dict) -> UniIDAttn2Replace:
        twin = copy.copy(self)
        twin.previous = copy.deepcopy(self.previous, memo)
        return twin

    def to(self, device_or_dtype) -> UniIDAttn2Replace:
        """ComfyUI moves patches with the model; our tensors are cached per device, so only forward it."""
        if self.previous is not None and hasattr(self.previous, "to"):
            moved = self.previous.to(device_or_dtype)
            if moved is not self.previous:
                twin = copy.copy(self)
                twin.previous = moved
                return twin
        return self

    def models(self) -> list:
        """Our ip projections plus whatever the wrapped patch needs loaded."""
        extra = (
            self.previous.models() if self.previous is not None and hasattr(self.previous, "models") else []
        )
        return self.state.models() + list(extra)


class UniIDApplyModelWrapper:
    """APPLY_MODEL wrapper: per-call scales and row routing for the layers, text-token scaling in context."""

    def __init__(self, state: UniIDPatchState) -> None:
        self.state = state

    def __deepcopy__(self, memo: dict) -> UniIDApplyModelWrapper:
        return self

    def __call__(
        self,
        executor,
        x,
        t,
        c_concat=None,
        c_crossattn=None,
        control=None,
        transformer_options=None,
        **kwargs,
    ):
        options = dict(transformer_options or {})
        sample_sigmas = options.get("sample_sigmas")
        state = self.state
        c_crossattn = state.scale_text_rows(c_crossattn, t, sample_sigmas)
        if state.tokens is not None:
            kinds = tuple(options.get("cond_or_uncond") or [POSITIVE])
            rows = state.rows_for(list(kinds), x.shape[0], x.device)
            options[state.key] = CallInfo(
                rows, (kinds, x.shape[0]), state.adapter_scale(t, sample_sigmas).to(x.device)
            )
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def install(model_patcher, state: UniIDPatchState, layers: list) -> None:
    """Register the wrapper and one replace patch per layer on ``model_patcher`` (a clone), composing."""
    options = model_patcher.model_options
    comfy.patcher_extension.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.APPLY_MODEL,
        state.key,
        UniIDApplyModelWrapper(state),
        options,
        is_model_options=True,
    )
    if state.tokens is None:
        return
    replaces = options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for index, layer in enumerate(layers):
        block, number, inner = layer.key
        previous = replaces.get(layer.key, replaces.get((block, number)))
        model_patcher.set_model_attn2_replace(UniIDAttn2Replace(state, index, previous), block, number, inner)
