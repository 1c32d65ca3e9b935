"""Test instrumentation: what every UNet call of a real ComfyUI sampling run used, and which step it was.

``Recorder`` is a DIFFUSION_MODEL wrapper (it runs inside ComfyUI's apply_model, after every UniID
wrapper) that keeps, per call: the sigma, the cond list index of each batch chunk, the context the UNet
got, per UniID slot the token set each row's adapter keys came from, those keys themselves and the
adapter scale (of the first attn2 layer; the others differ only by the rescaler's layer weights), and
the UNet's output.
``LoopTracker`` replaces the ``trange`` of ComfyUI's sampler modules so every call also knows the
sampler's own loop index: an oracle for "which step is this" that does not use our step tracking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The official inference.py scales, written out so the tests do not read them from our own defaults.
SCALES = dict(text_scale_before=0.5, text_scale_after=1.8, adapter_scale_before=0.8, adapter_scale_after=1.2)


@dataclass
class Call:
    """One UNet call."""

    sigma: float
    chunks: list[int]
    context: torch.Tensor
    loop: int | None
    token_sets: list[list[int]] = field(default_factory=list)
    scales: list[list[float]] = field(default_factory=list)
    keys: list[torch.Tensor | None] = field(default_factory=list)
    output: torch.Tensor | None = None

    def rows(self, chunk: int) -> range:
        """Batch rows of the chunk at ``chunk`` (cond list index order as ComfyUI batched them)."""
        per = self.context.shape[0] // len(self.chunks)
        return range(chunk * per, (chunk + 1) * per)

    def rows_of(self, cond_index: int) -> list[int]:
        """Every batch row that came from cond list ``cond_index``."""
        return [r for i, c in enumerate(self.chunks) if c == cond_index for r in self.rows(i)]


class LoopTracker:
    """The sampler's current loop index, read from a replaced ``trange``."""

    def __init__(self) -> None:
        self.index: int | None = None

    def trange(self, n, *args, **kwargs):
        for i in range(int(n)):
            self.index = i
            yield i

    def install(self, monkeypatch) -> LoopTracker:
        import comfy.extra_samplers.uni_pc as uni_pc
        import comfy.k_diffusion.sampling as k_sampling

        monkeypatch.setattr(k_sampling, "trange", self.trange)
        monkeypatch.setattr(uni_pc, "trange", self.trange)
        return self


class Recorder:
    """Records every UNet call of a model clone (``recorder.model``)."""

    def __init__(self, model, states: list, loop: LoopTracker | None = None) -> None:
        import comfy.patcher_extension as ext

        self.model = model.clone()
        self.states = states
        self.loop = loop
        self.calls: list[Call] = []
        ext.add_wrapper_with_key(
            ext.WrappersMP.DIFFUSION_MODEL,
            "test_recorder",
            self,
            self.model.model_options,
            is_model_options=True,
        )

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        call = Call(
            sigma=float(transformer_options["sigmas"].reshape(-1)[0]),
            chunks=list(transformer_options["cond_or_uncond"]),
            context=context.detach().clone(),
            loop=None if self.loop is None else self.loop.index,
        )
        slots = transformer_options.get("uniid", ())
        for state in self.states:
            data = slots[state.slot] if state.slot < len(slots) else None
            call.keys.append(None if data is None else data.k.detach().clone())
            if data is None:
                call.token_sets.append([])
                call.scales.append([])
                continue
            k_sets = state.kv_stack(data.k.device, data.k.dtype)[0]
            call.token_sets.append(
                [next(i for i, s in enumerate(k_sets) if torch.equal(s, row)) for row in data.k]
            )
            scale = data.scale[0].reshape(-1).float()
            call.scales.append((scale.expand(x.shape[0]) if scale.numel() == 1 else scale).tolist())
        self.calls.append(call)
        out = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        call.output = out.detach().clone()
        return out


def text_scale(context_rows: torch.Tensor, tokens: torch.Tensor) -> float:
    """The factor f with context_rows == f * tokens (asserted to hold), for the spliced identity rows."""
    factor = float((context_rows * tokens).sum() / (tokens * tokens).sum())
    torch.testing.assert_close(context_rows, tokens * factor, atol=1e-5, rtol=1e-5)
    return factor


def _one_evaluation(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A 'sampler' that evaluates the guided model once at sigmas[0] and returns its denoised output."""
    denoised = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
    if callback is not None:
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
    return denoised


def one_evaluation(model, positive, negative, sigma: float, cfg: float = 4.0, size: int = 8) -> torch.Tensor:
    """The CFG-guided denoised prediction of one model evaluation at ``sigma`` through ComfyUI's guider."""
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    noise = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([sigma, 0.0])
    sampler = comfy.samplers.KSAMPLER(_one_evaluation)
    return guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=0)


class LayerRecorder:
    """Wraps every attn2 replace patch of a model clone (``recorder.model``) and records, per layer key
    and call, the largest difference between the patch's output and the text attention of the same
    inputs: the identity term that layer added."""

    def __init__(self, model) -> None:
        self.model = model.clone()
        self.terms: dict[tuple, list[float]] = {}
        replaces = self.model.model_options["transformer_options"]["patches_replace"]["attn2"]
        for key, patch in list(replaces.items()):
            self.model.set_model_attn2_replace(_RecordedLayer(patch, key, self.terms), *key)

    def by_group(self) -> dict[str, list[float]]:
        """Every recorded identity term, by block group (input, middle, output)."""
        groups: dict[str, list[float]] = {}
        for key, terms in self.terms.items():
            groups.setdefault(key[0], []).extend(terms)
        return groups


class _RecordedLayer:
    """One wrapped attn2 patch (ComfyUI's patch protocol: call, to, models; shared by model clones)."""

    def __init__(self, patch, key: tuple, terms: dict) -> None:
        self.patch, self.key, self.terms = patch, key, terms

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as comfy_attention

        out = self.patch(q, k, v, extra_options)
        text = comfy_attention.optimized_attention(
            q,
            k,
            v,
            extra_options["n_heads"],
            attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options,
        )
        self.terms.setdefault(self.key, []).append(float((out - text).abs().max()))
        return out

    def __deepcopy__(self, memo: dict):
        return self

    def to(self, device_or_dtype):
        self.patch = self.patch.to(device_or_dtype)
        return self

    def models(self) -> list:
        return self.patch.models()
