"""The UniID sampling patch: per-run preparation, per-step scales, per-row token sets, the attn2 layers.

One ``UniIDState`` per UniID Apply; on the MODEL it installs four wrappers and one attn2 replace per
cross-attention layer (all under the wrapper key "uniid"):

- SAMPLER_SAMPLE, once per sampler run: copies the run's sigmas to the host, continues the step count
  of a run this one continues (split sampling, see segments.py), projects the identity's token sets
  through every layer's to_k_ip/to_v_ip, decides which cond entries carry this Apply's identity (by the
  conditioning they actually run), and wraps the step callback that drives the host-side ``StepClock``.
- PREDICT_NOISE, once per model evaluation: picks the evaluation's step and its scales.
- CALC_COND_BATCH: multiplies this Apply's marked text rows by the step's text scale in the cond entries
  themselves, so the UNet and everything that reads the conditioning (ControlNet) see the same tokens,
  and tags every row with the token set it uses, as a model cond that ComfyUI batches along with the
  rows: a marked row gets the identity (identity i for latent i with an identity batch), every other
  row the negative set (zero-face features, the official negative, or UniID Apply's negative identity).
  With a mask, each row is also tagged with where its UNet input lies in the whole latent (ComfyUI
  crops the latent to an entry's area).
- APPLY_MODEL: turns the batched row tags into per-call tensors at transformer_options["uniid"][slot],
  the mask as the window of each row's area at every level.

The attn2 patch only reads those tensors: no lock, cache or branch on values in the per-layer path, so
torch.compile traces it once, and another identity, other scales or other per-layer weights of the
rescaler reuse the compiled graph (the weights are folded into the per-call scale tensor, one row per
layer; the strategy's parameters travel as tensors too).
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import comfy.conds
import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension as ext
import torch

from uniid_core.attention import combine_identity, project_ip
from uniid_core.errors import UniIDError
from uniid_core.regions import Window, window_masks
from uniid_core.rescaler import Rescaler, as_rescaler
from uniid_core.schedule import MergeSchedule

from .conditioning import POSITIVE, UniIDMark, mark_for, scale_rows
from .segments import SegmentLog
from .steps import BY_SIGMA, StepClock, is_known, step_rule

LOG = logging.getLogger("UniID")
WRAPPER_KEY = "uniid"
CALL_KEY = "uniid"
TOKENS_IDENTITY, TOKENS_NEGATIVE = 0, 1  # row kinds: this Apply's identity, or the negative set
ROLE_TOKENS = {POSITIVE: TOKENS_IDENTITY}
UNLIMITED_SIGMA = 1e8  # ComfyUI's percent_to_sigma(0) is 999999999.9: no upper limit
NO_SIGMA = 999999999.9  # the sigma attn2 patches of other packs assume when a call has none


class UniIDCall(NamedTuple):
    """What the attn2 layers of one slot read for one model call (tensors only).

    ``k``/``v`` hold every layer's keys/values side by side, (B, M, sum of widths): each layer reads
    its own column span, so a call hands the UNet two tensors instead of two per layer. ``scale`` is
    (layers, 1|B, 1, 1): the step's adapter scale times each layer's rescaler weight (times the
    start/end gate per row); layer i reads ``scale[i]``. ``params`` are the rescaler strategy's
    parameters as 0-dim tensors.
    """

    k: torch.Tensor
    v: torch.Tensor
    scale: torch.Tensor
    regions: tuple[torch.Tensor, ...] | None
    params: dict[str, torch.Tensor]


class Claim(NamedTuple):
    """How one sampler cond entry runs with an Apply: its rows' token set, and the mark of the text rows
    to scale (only on entries that run the Apply's positive)."""

    tokens: int
    mark: UniIDMark | None


@dataclass(frozen=True)
class StepChoice:
    """The scales of one model evaluation (decided on the host, once per evaluation)."""

    before: bool
    text_scale: float


def compute_dtype(base_model: object) -> torch.dtype:
    """The dtype the UNet computes in (the manual-cast dtype for fp8/low-precision weights)."""
    cast = getattr(base_model, "manual_cast_dtype", None)
    return cast if cast is not None else base_model.get_dtype()


class UniIDState:
    """One applied identity: token sets, weights, schedule, mask, and what runs with it left behind.

    ``token_sets`` (identities + negatives, M, 2048) stacks the identity's adapter tokens (one set per
    latent for an identity batch) and then the negative rows' (one set, or one per latent).
    """

    def __init__(
        self,
        *,
        token_sets: torch.Tensor | None,
        ip_patcher: object | None,
        schedule: MergeSchedule,
        rescaler: str | Rescaler,
        sigma_start: float,
        sigma_end: float,
        levels: list[int],
        mask: torch.Tensor | None = None,
        identities: int = 1,
        negatives: int = 1,
    ) -> None:
        if token_sets is not None and token_sets.shape[0] != identities + negatives:
            raise ValueError(f"{token_sets.shape[0]} token sets for {identities} + {negatives} row kinds")
        self.tag = uuid.uuid4().hex
        self.slot = 0
        self.identities, self.negatives = identities, negatives
        self.token_sets = None if token_sets is None else token_sets.detach().float().cpu()
        self.ip_patcher = ip_patcher
        self.schedule = schedule
        self.rescaler = as_rescaler(rescaler)
        self.layer_weights = [1.0] * len(levels)
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)
        self.limited = self.sigma_start < UNLIMITED_SIGMA or self.sigma_end > 0
        self.levels = max(levels, default=0) + 1
        self.mask = None if mask is None else mask.detach().float().cpu().reshape(-1, *mask.shape[-2:])
        self.segments = SegmentLog()
        self._kv: dict[tuple, tuple] = {}
        self._index = {
            TOKENS_IDENTITY: torch.arange(identities),
            TOKENS_NEGATIVE: torch.arange(identities, identities + negatives),
        }

    def __deepcopy__(self, memo: dict) -> UniIDState:
        return self

    @property
    def has_adapter(self) -> bool:
        """True when the identity has adapter tokens (and the model carries the attn2 patches)."""
        return self.token_sets is not None

    def check_batch(self, latents: int) -> None:
        """Refuse a latent batch that an identity batch (or a negative identity batch) does not fit."""
        for count, what in ((self.identities, "identity"), (self.negatives, "negative_identity")):
            if count not in (1, latents):
                raise UniIDError(
                    f"UniID Apply's {what} is a batch of {count} identities but the latent batch is "
                    f"{latents}: identity i goes to latent i, so give one identity (used for every latent) "
                    f"or {latents}, or set the latent batch size to {count} (UniID Identity Batch's count "
                    "output gives it)"
                )

    def key(self, name: str) -> str:
        """A per-slot key for host-side values that never reach the UNet."""
        return f"uniid_{name}_{self.slot}"

    def models(self) -> list:
        """ModelPatchers ComfyUI must load with the UNet (the ip projections)."""
        return [] if self.ip_patcher is None else [self.ip_patcher]

    def kv_stack(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (S, M, sum of widths) of every token set, all layers side by side in layer
        order, projected once per device and dtype.

        The projection runs where ComfyUI put the ip weights (also under --lowvram); only the small
        K/V are kept, so the weights themselves stay under ComfyUI's memory management.
        """
        key = (_device_key(device), dtype)
        cached = self._kv.get(key)
        if cached is None:
            module = self.ip_patcher.model
            with torch.no_grad():
                pairs = [
                    project_ip(self.token_sets, k, v)
                    for k, v in zip(module.to_k_ip, module.to_v_ip, strict=True)
                ]
            cached = (
                torch.cat([k for k, _ in pairs], -1).to(device, dtype).contiguous(),
                torch.cat([v for _, v in pairs], -1).to(device, dtype).contiguous(),
            )
            self._kv[key] = cached
        return cached

    @property
    def claim_key(self) -> str:
        """Where a sampler cond entry keeps its claim for this Apply (set once per run by ``resolve``)."""
        return f"uniid_claim_{self.tag}"

    def claims(self, entries: list[dict]) -> list[Claim]:
        """Each entry's claim, judged by the conditioning it actually runs (its model_conds' c_crossattn).

        An entry that carries this Apply's mark and runs the conditioning the mark was made for owns that
        tensor; every entry that runs an owned tensor gets the owner's mark. So ComfyUI's area fill-ins
        are treated by what they carry: the positive-list copy of a negative with an area runs the
        spliced positive (identity, scaled text), the negative-list copy of a positive with an area
        keeps the positive's options but runs the negative (negative set). An all-zero tensor
        (ConditioningZeroOut of the positive) and everything else get the negative set: the zero-face
        tokens (the official negative) or the negative identity.
        """
        owners: dict[int, tuple[torch.Tensor, UniIDMark]] = {}
        for cond in entries:
            mark, tensor = mark_for(cond, self.tag), _cross_attn(cond)
            if mark is not None and tensor is not None and tensor is cond.get("cross_attn"):
                owners[id(tensor)] = (tensor, mark)
        nonzero: dict[int, bool] = {}
        out = []
        for cond in entries:
            tensor = _cross_attn(cond)
            owner = None if tensor is None else owners.get(id(tensor))
            if owner is not None and id(tensor) not in nonzero:
                nonzero[id(tensor)] = bool(torch.count_nonzero(tensor))
            if owner is None or not nonzero[id(tensor)]:
                out.append(Claim(TOKENS_NEGATIVE, None))
                continue
            tokens = ROLE_TOKENS.get(owner[1].role, TOKENS_NEGATIVE)
            out.append(Claim(tokens, owner[1] if tokens == TOKENS_IDENTITY else None))
        return out

    def resolve(self, entry_lists: Iterable[list | None]) -> None:
        """Decide every entry's claim once per run, before any wrapper copies the entries."""
        entries = [cond for entries in entry_lists for cond in entries or ()]
        for cond, claim in zip(entries, self.claims(entries), strict=True):
            cond[self.claim_key] = claim

    def prepare(self, cond: dict, text_scale: float, window: comfy.conds.CONDRegular | None = None) -> dict:
        """A copy of a resolved cond entry with the row tags (the token set of each latent's row: ComfyUI
        repeats a single set to the batch; with a mask, where each row's UNet input lies) and, on
        entries that run this Apply's positive, the scaled text rows."""
        claim = cond[self.claim_key]
        out = dict(cond)
        model_conds = dict(cond["model_conds"])
        model_conds[self.key("rows")] = comfy.conds.CONDRegular(self._index[claim.tokens])
        if window is not None:
            model_conds[self.key("window")] = window
        mark = claim.mark
        if mark is not None and mark.count and text_scale != 1.0:
            scaled = scale_rows(model_conds["c_crossattn"].cond, mark, text_scale)
            model_conds["c_crossattn"] = model_conds["c_crossattn"]._copy_with(scaled)
            out["cross_attn"] = scaled
        out["model_conds"] = model_conds
        return out


def _device_key(device: torch.device | str) -> torch.device:
    """A device with its index ("cuda" is the current CUDA device, so "cuda" and "cuda:0" are one key)."""
    device = torch.device(device)
    if device.index is None and device.type != "cpu":
        device = torch.empty(0, device=device).device
    return device


def _cross_attn(cond: dict) -> torch.Tensor | None:
    """The text conditioning a sampler cond entry runs the UNet with."""
    crossattn = cond.get("model_conds", {}).get("c_crossattn")
    return None if crossattn is None else crossattn.cond


def _area_corner(area: tuple | None) -> tuple[int, int]:
    """Top-left corner (latent pixels) of the window ComfyUI runs an entry with ``area`` on.

    As comfy.samplers.get_area_and_mult: an area is (sizes..., offsets...), missing leading dimensions
    count as offset 0, extra ones beyond the latent's two are ignored.
    """
    if area is None:
        return 0, 0
    offsets = [int(v) for v in area[len(area) // 2 :]]
    offsets = ([0, 0] + offsets)[-2:] if len(offsets) < 2 else offsets[:2]
    return offsets[0], offsets[1]


class UniIDRun:
    """One sampler run of one state: host sigmas, step clock, projected K/V and per-call caches."""

    def __init__(
        self,
        state: UniIDState,
        device: torch.device,
        dtype: torch.dtype,
        sigmas: list[float] | None = None,
        offset: int = 0,
        sampler: object | None = None,
    ) -> None:
        self.state = state
        self.device = device
        self.sigmas = sigmas
        self.offset = offset
        rule = step_rule(sampler)
        self.clock = (
            None if sigmas is None or rule == BY_SIGMA else StepClock(rule, sigmas, _options(sampler))
        )
        schedule = state.schedule
        self.choice = StepChoice(False, schedule.text_after)
        self.kv = state.kv_stack(device, dtype) if state.has_adapter else None
        adapter = torch.tensor([schedule.adapter_before, schedule.adapter_after], dtype=torch.float32)
        weights = torch.tensor(state.layer_weights, dtype=torch.float32)
        self.scales = (adapter[:, None] * weights).reshape(2, -1, 1, 1, 1).to(device)
        self.params = state.rescaler.param_tensors(device)
        self._gathered: dict[tuple, tuple] = {}
        self._regions: dict[tuple, tuple] = {}
        self._window_tags: dict[tuple, comfy.conds.CONDRegular] = {}

    def on_step(self, step: int) -> None:
        """The sampler's step callback."""
        if self.clock is not None:
            self.clock.on_step(step)

    def choose(self, timestep: torch.Tensor) -> StepChoice:
        """The step and scales of the evaluation about to run (host-side; step-less samplers read sigma)."""
        schedule = self.state.schedule
        if self.clock is not None and not self.clock.silent():
            local = self.clock.next_evaluation()
            before = schedule.before_merge(self.offset + local, self.sigmas[min(local, len(self.sigmas) - 1)])
        elif self.sigmas is not None:
            before = schedule.before_merge_at_sigma(float(timestep.reshape(-1)[0]), self.sigmas, self.offset)
        else:
            before = False
        self.choice = StepChoice(before, schedule.text_scale(before))
        return self.choice

    def call(
        self, rows: torch.Tensor, sigma: torch.Tensor, shape: torch.Size, windows: torch.Tensor | None = None
    ) -> UniIDCall:
        """The tensors for one model call with these row tags (the tags arrive on the CPU: no device read)."""
        layout = tuple(rows.tolist())
        gathered = self._gathered.get(layout)
        if gathered is None:
            index = rows.to(self.device)
            gathered = tuple(kv.index_select(0, index) for kv in self.kv)
            self._gathered[layout] = gathered
        scale = self.scales[0 if self.choice.before else 1]
        if self.state.limited:
            sigma = sigma.reshape(1, -1, 1, 1).to(self.device, torch.float32)
            scale = scale * ((sigma <= self.state.sigma_start) & (sigma >= self.state.sigma_end))
        return UniIDCall(gathered[0], gathered[1], scale, self._regions_for(shape, windows), self.params)

    def window_tag(self, cond: dict, x_in: torch.Tensor) -> comfy.conds.CONDRegular:
        """Row tags of one cond entry for a calc_cond_batch call: (latent index, top, left, latent height,
        latent width) per row, where ComfyUI puts the entry's UNet input (its area's window)."""
        batch, height, width = int(x_in.shape[0]), int(x_in.shape[-2]), int(x_in.shape[-1])
        top, left = _area_corner(cond.get("area"))
        key = (batch, top, left, height, width)
        tag = self._window_tags.get(key)
        if tag is None:
            rows = [[latent, top, left, height, width] for latent in range(batch)]
            tag = comfy.conds.CONDRegular(torch.tensor(rows, dtype=torch.int64))
            self._window_tags[key] = tag
        return tag

    def _regions_for(
        self, shape: torch.Size, windows: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...] | None:
        """The mask over each row's window at every level's token grid, (b, Lq, 1) float32 on the device,
        cached by the rows' windows and the call's latent size (a row without a tag covers the latent)."""
        mask = self.state.mask
        if mask is None:
            return None
        batch, height, width = int(shape[0]), int(shape[-2]), int(shape[-1])
        if windows is None:
            layout = tuple(Window(row, 0, 0, height, width) for row in range(batch))
        else:
            layout = tuple(Window(*row) for row in windows.tolist())
        key = (layout, height, width)
        cached = self._regions.get(key)
        if cached is None:
            grids = window_masks(mask, layout, height, width, self.state.levels)
            cached = tuple(grid.to(self.device) for grid in grids)
            self._regions[key] = cached
        return cached


def _options(sampler: object | None) -> dict:
    return dict(getattr(sampler, "extra_options", None) or {})


class _Wrapper:
    """Base of the four wrappers: holds the state; ComfyUI's deep copies of model options share it."""

    def __init__(self, state: UniIDState) -> None:
        self.state = state

    def __deepcopy__(self, memo: dict) -> _Wrapper:
        return self


class SamplerRunWrapper(_Wrapper):
    """SAMPLER_SAMPLE: set up the run, drive the step clock from the step callback, record where it ended
    (a run that stops short of sigma 0 can be continued by one that adds no noise to what it returned)."""

    def __call__(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        state = self.state
        state.check_batch(int(noise.shape[0]))
        sampler = executor.class_obj
        host = [float(s) for s in sigmas.tolist()]
        latent = args[0] if args else kwargs.get("latent_image")
        offset = state.segments.steps_before(host[0], noise, latent) if host else 0
        run = UniIDRun(state, noise.device, compute_dtype(guider.inner_model), host, offset, sampler)
        if not is_known(sampler):
            LOG.info(
                "UniID: %s is not one of ComfyUI's samplers; each model evaluation after its step callback "
                "counts toward the next step",
                type(sampler).__name__,
            )
        state.resolve((getattr(guider, "conds", None) or {}).values())
        extra_args = {**extra_args, "model_options": {**extra_args["model_options"], state.key("run"): run}}

        def on_step(step, denoised, x, total_steps):
            run.on_step(step)
            if callback is not None:
                callback(step, denoised, x, total_steps)

        samples = executor(guider, sigmas, extra_args, on_step, noise, *args, **kwargs)
        if host:
            state.segments.record(host[-1], offset + len(host) - 1, samples)
        return samples


class PredictNoiseWrapper(_Wrapper):
    """PREDICT_NOISE: one model evaluation of the sampler; choose its step's scales."""

    def __call__(self, executor, x, timestep, model_options=None, seed=None):
        run = (model_options or {}).get(self.state.key("run"))
        if run is not None:
            run.choose(timestep)
        return executor(x, timestep, model_options, seed)


class CondBatchWrapper(_Wrapper):
    """CALC_COND_BATCH: scale this Apply's text rows and tag every entry with its token set (and window)."""

    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        state = self.state
        run = model_options.get(state.key("run"))
        if run is None:
            run = UniIDRun(state, x_in.device, compute_dtype(model))
        if any(state.claim_key not in c for entries in conds if entries is not None for c in entries):
            state.resolve(conds)
        text_scale = run.choice.text_scale
        masked = state.mask is not None and state.has_adapter
        prepared = [
            None
            if entries is None
            else [state.prepare(c, text_scale, run.window_tag(c, x_in) if masked else None) for c in entries]
            for entries in conds
        ]
        options = {**model_options.get("transformer_options", {}), state.key("plan"): run}
        return executor(model, prepared, x_in, timestep, {**model_options, "transformer_options": options})


class ApplyModelWrapper(_Wrapper):
    """APPLY_MODEL: per-call tensors for the attn2 layers from the batched row tags."""

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
        state = self.state
        rows = kwargs.pop(state.key("rows"), None)
        windows = kwargs.pop(state.key("window"), None)
        options = dict(transformer_options or {})
        run = options.pop(state.key("plan"), None)
        if rows is not None and run is not None and state.has_adapter:
            calls = list(options.get(CALL_KEY, ()))
            calls += [None] * (state.slot + 1 - len(calls))
            calls[state.slot] = run.call(rows, t, x.shape, windows)
            options[CALL_KEY] = tuple(calls)
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


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
    """attn2 replacement for one layer: text attention (or a previous patch) plus the rescaled UniID term,
    plus the terms of packs applied after UniID that extend this patch (``add``)."""

    def __init__(
        self, state: UniIDState, layer: int, span: tuple[int, int], level: int, previous=None
    ) -> None:
        self.state = state
        self.slot = state.slot
        self.layer = layer
        self.start, self.stop = span
        self.level = level
        self.rescaler = state.rescaler
        self.previous = previous
        self.added: tuple[tuple, ...] = ()

    def __call__(self, q, k, v, extra_options: dict) -> torch.Tensor:
        if self.previous is not None:
            text_out = self.previous(q, k, v, extra_options)
        else:
            text_out = _attention(q, k, v, extra_options)
        out = self._with_identity(text_out, q, extra_options)
        return self._with_added(out, q, k, v, extra_options) if self.added else out

    def _with_identity(self, text_out, q, extra_options: dict) -> torch.Tensor:
        calls = extra_options.get(CALL_KEY)
        if calls is None or len(calls) <= self.slot or calls[self.slot] is None:
            return text_out
        call = calls[self.slot]
        k_ip = call.k[:, :, self.start : self.stop].to(q.dtype)
        v_ip = call.v[:, :, self.start : self.stop].to(q.dtype)
        ip_out = _attention(q, k_ip, v_ip, extra_options)
        region = None if call.regions is None else call.regions[self.level]
        return combine_identity(
            text_out, ip_out, call.scale[self.layer], self.rescaler, self.layer, region, params=call.params
        )

    def _with_added(self, out, q, k, v, extra_options: dict) -> torch.Tensor:
        """The added packs' terms, each inside its sigma range, as their own attn2 patches add them (they
        read the call's sigma on the host; only models with such a pack applied pay for that)."""
        sigmas = extra_options.get("sigmas")
        sigma = NO_SIGMA if sigmas is None else float(sigmas.reshape(-1)[0])
        for callback, kwargs in self.added:
            if kwargs.get("sigma_end", 0.0) <= sigma <= kwargs.get("sigma_start", NO_SIGMA):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)

    def add(self, callback, **kwargs) -> None:
        """Extend this layer with another pack's term (the protocol of ComfyUI_IPAdapter_plus and PuLID
        applied after UniID: ``out + callback(out, q, k, v, extra_options, **kwargs)`` while the call's
        sigma is in [sigma_end, sigma_start]).

        Those packs call it on the patch in their own clone of the model: ComfyUI's clone deep-copies
        model_options, which gives every clone its own twin of this patch, and ``added`` is rebound,
        never changed in place, so the model UniID Apply returned keeps its patches as they were.
        """
        self.added = (*self.added, (callback, dict(kwargs)))

    def set_new_condition(self, *args, **kwargs) -> None:
        """The older protocol (ComfyUI_InstantID, early IPAdapter plus): their own patch class with their
        own arguments, which this patch cannot take over."""
        raise UniIDError(
            "a node applied after UniID Apply (ComfyUI_InstantID or an older IPAdapter plus) tried to extend "
            "UniID's cross-attention patch, which it cannot do; apply it before UniID Apply (model -> "
            "InstantID/IPAdapter -> UniID Apply -> sampler)"
        )

    def __deepcopy__(self, memo: dict) -> UniIDAttn2Replace:
        twin = copy.copy(self)
        twin.previous = copy.deepcopy(self.previous, memo)
        return twin

    def to(self, device_or_dtype) -> UniIDAttn2Replace:
        """ComfyUI moves patches with the model; ours hold no weights, so only forward it."""
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


WRAPPERS = (
    (ext.WrappersMP.SAMPLER_SAMPLE, SamplerRunWrapper),
    (ext.WrappersMP.PREDICT_NOISE, PredictNoiseWrapper),
    (ext.WrappersMP.CALC_COND_BATCH, CondBatchWrapper),
    (ext.WrappersMP.APPLY_MODEL, ApplyModelWrapper),
)


def install_patch(model_patcher, state: UniIDState, layers: list) -> None:
    """Register the wrappers and one replace patch per layer on ``model_patcher`` (a clone), composing.

    The state's slot is the number of UniID Applies already on the model, so a stacked Apply finds its
    own per-call tensors at transformer_options["uniid"][slot]; its rescaler's per-layer weights are
    resolved here for these layers (a position the model does not have is an error).
    """
    state.layer_weights = state.rescaler.layer_weights([layer.group for layer in layers])
    options = model_patcher.model_options
    state.slot = len(ext.get_wrappers_with_key(ext.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, options, True))
    for wrapper_type, wrapper in WRAPPERS:
        ext.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, wrapper(state), options, is_model_options=True)
    if not state.has_adapter:
        return
    replaces = options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    start = 0
    for index, layer in enumerate(layers):
        block, number, inner = layer.key
        previous = replaces.get(layer.key, replaces.get((block, number)))
        patch = UniIDAttn2Replace(state, index, (start, start + layer.width), layer.level, previous)
        model_patcher.set_model_attn2_replace(patch, block, number, inner)
        start += layer.width
