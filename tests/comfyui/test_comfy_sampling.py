"""UniID through real ComfyUI sampling: the scales and token sets of every model call, on every path.

Runs KSampler, KSamplerAdvanced and SamplerCustomAdvanced graphs (ComfyUI's own node classes) on the
mini SDXL-layout UNet (8x8 latents, 2-6 steps) and checks (1) an instrumented record of each UNet call
against an oracle that does not use our step tracking (the sampler's own loop index) and (2) pairs of
graphs that must give the same latent up to float noise.
"""

from __future__ import annotations

import pytest
import torch

from tests.comfyui.conftest import guiders_equal_to_cfg, init_weights, random_conditioning, random_identity
from tests.comfyui.recording import SCALES, Call, LoopTracker, Recorder, text_scale

MERGE, STEPS = 2, 4
CLOSE = dict(rtol=1e-4, atol=1e-4)


def apply(pack, model, positive, weights, identity, merge_step=MERGE, **kw):
    """UniID Apply with the official scales; returns (model, positive, state)."""
    import comfy.patcher_extension as ext

    args = dict(merge_step=merge_step, **SCALES, rescale="normalized", start_percent=0.0, end_percent=1.0)
    args.update(kw)
    model, positive = pack.apply.UniIDApply.execute(model, positive, weights, identity, **args)
    state = ext.get_wrappers_with_key(ext.WrappersMP.SAMPLER_SAMPLE, "uniid", model.model_options, True)[
        -1
    ].state
    return model, positive, state


def latent(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


def ksampler(cn, model, positive, negative, *, steps=STEPS, cfg=4.0, sampler="euler", batch=1, seed=0):
    out = cn.nodes.common_ksampler(
        model, seed, steps, cfg, sampler, "normal", positive, negative, latent(batch)
    )
    return out[0]["samples"]


def advanced(cn, model, positive, negative, start, end, *, steps=6, sampler="euler", source=None):
    """KSamplerAdvanced: noise only for a run from step 0, leftover noise kept unless it ends the run."""
    first = start == 0
    (out,) = cn.nodes.KSamplerAdvanced().sample(
        model,
        "enable" if first else "disable",
        0,
        steps,
        4.0,
        sampler,
        "normal",
        positive,
        negative,
        latent() if source is None else source,
        start,
        end,
        "enable" if end < steps else "disable",
    )
    return out


def expected(call: Call, step: int, positive_rows: list[int]) -> None:
    """Assert the call used step ``step``'s scales on every row and the identity only on positive rows."""
    before = step < MERGE
    adapter = SCALES["adapter_scale_before"] if before else SCALES["adapter_scale_after"]
    assert call.scales[0] == pytest.approx([adapter] * call.context.shape[0]), (call.sigma, step)
    assert call.token_sets[0] == [0 if r in positive_rows else 1 for r in range(call.context.shape[0])]


def check_text_rows(call, rows: list[int], tokens: torch.Tensor, step: int) -> None:
    want = SCALES["text_scale_before"] if step < MERGE else SCALES["text_scale_after"]
    for row in rows:
        assert text_scale(call.context[row, 1:4], tokens) == pytest.approx(want, rel=1e-5), (call.sigma, row)


@pytest.fixture(scope="module")
def applied(pack, mini_sdxl, mini_uniid, conds):
    identity = random_identity(mini_uniid, 11)
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, identity)
    return model, positive, state, identity.text_tokens_rescaled[0]


def test_every_builtin_sampler_uses_each_steps_scales(cn, applied, conds, monkeypatch):
    """Every call of sampler loop step i (heun's and the midpoint samplers' extra calls included) uses
    step i's scales; dpm_fast/dpm_adaptive, which have no steps, go by each call's sigma."""
    model, positive, state, tokens = applied
    loop = LoopTracker().install(monkeypatch)
    sigma_placed = {"dpm_fast", "dpm_adaptive"}
    for name in cn.samplers.SAMPLER_NAMES:
        recorder = Recorder(model, [state], loop)
        ksampler(cn, recorder.model, positive, conds[1], sampler=name)
        assert recorder.calls, name
        sigmas = cn.samplers.KSampler(model, STEPS, "cpu", name, "normal").sigmas.tolist()
        for call in recorder.calls:
            step = call.loop
            if name in sigma_placed:
                step = 0 if call.sigma > sigmas[MERGE] * (1 + 1e-5) else MERGE
            expected(call, step, call.rows_of(0))
            check_text_rows(call, call.rows_of(0), tokens, step)
        loops = [c.loop for c in recorder.calls]
        if name not in sigma_placed:
            assert sorted(set(loops)) == list(range(STEPS)), (name, loops)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "uni_pc"])
def test_required_samplers_call_pattern(cn, applied, conds, monkeypatch, name):
    """The record of the named samplers, with their known calls per step (heun: two except the last)."""
    model, positive, state, _ = applied
    loop = LoopTracker().install(monkeypatch)
    recorder = Recorder(model, [state], loop)
    ksampler(cn, recorder.model, positive, conds[1], sampler=name)
    per_step = {"heun": 2, "dpmpp_2s_ancestral": 2}.get(name, 1)
    want = [i for i in range(STEPS) for _ in range(per_step if i < STEPS - 1 else 1)]
    assert [c.loop for c in recorder.calls] == want
    befores = [c.scales[0][0] == pytest.approx(0.8) for c in recorder.calls]
    assert befores == [i < MERGE for i in want]


def test_guiders_route_rows_by_marker_not_by_position(cn, applied, conds):
    """DualCFG (regular and nested), PerpNeg and a guider with reversed cond order give the same image
    as plain CFG when they reduce to it, and only the rows from UniID Apply's positive get the identity."""
    model, positive, state, _ = applied
    negative, custom = conds[1], cn.custom
    sigmas = custom.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]

    class Reversed(cn.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options=None, seed=None):
            neg, pos = cn.samplers.calc_cond_batch(
                self.inner_model, [self.conds["negative"], self.conds["positive"]], x, timestep, model_options
            )
            return neg + (pos - neg) * self.cfg

    def reversed_guider(m):
        guider = Reversed(m)
        guider.set_conds(positive, negative)
        guider.set_cfg(4.0)
        return guider

    guiders = {**guiders_equal_to_cfg(cn, positive, negative), "reversed": (reversed_guider, 1)}
    reference = ksampler(cn, model, positive, negative)
    for name, (make, positive_index) in guiders.items():
        recorder = Recorder(model, [state])
        noise = custom.Noise_RandomNoise(0)
        out = custom.SamplerCustomAdvanced().sample(noise, make(recorder.model), sampler, sigmas, latent())[0]
        torch.testing.assert_close(out["samples"], reference, **CLOSE, msg=name)
        assert len(recorder.calls) == STEPS, name
        for call in recorder.calls:
            assert call.token_sets[0] == [0 if c == positive_index else 1 for c in call.chunks], name


@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize("merge", [2, 4])
def test_ksampler_advanced_split_equals_one_pass(cn, pack, mini_sdxl, mini_uniid, conds, name, merge):
    """0->3 then 3->6 with the same Apply continues the schedule: the same latent as one 6-step pass,
    whether the merge step falls in the first or the second part."""
    identity = random_identity(mini_uniid, 12)
    model, positive, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=merge)
    whole = advanced(cn, model, positive, conds[1], 0, 6, sampler=name)["samples"]
    first = advanced(cn, model, positive, conds[1], 0, 3, sampler=name)
    split = advanced(cn, model, positive, conds[1], 3, 6, sampler=name, source=first)["samples"]
    torch.testing.assert_close(split, whole, **CLOSE)


def test_split_sigmas_continue_the_schedule(cn, pack, mini_sdxl, mini_uniid, conds):
    """SplitSigmas + two SamplerCustomAdvanced runs (the second without noise) equal one run."""
    identity = random_identity(mini_uniid, 13)
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=4)
    custom = cn.custom
    sigmas = custom.BasicScheduler().get_sigmas(model, "karras", 6, 1.0)[0]
    high, low = custom.SplitSigmas().get_sigmas(sigmas, 2)
    sampler = custom.KSamplerSelect().get_sampler("euler")[0]
    guider = custom.CFGGuider().get_guider(model, positive, conds[1], 4.0)[0]
    advanced_node = custom.SamplerCustomAdvanced()
    whole = advanced_node.sample(custom.Noise_RandomNoise(3), guider, sampler, sigmas, latent())[0]
    first = advanced_node.sample(custom.Noise_RandomNoise(3), guider, sampler, high, latent())[0]
    second = advanced_node.sample(custom.Noise_EmptyNoise(), guider, sampler, low, first)[0]
    torch.testing.assert_close(second["samples"], whole["samples"], **CLOSE)


def test_heun_pass_equals_before_part_then_after_part(cn, pack, mini_sdxl, mini_uniid, conds):
    """One heun pass (merge 2 of 5) equals 0->2 with 'before' scales throughout plus 2->5 with 'after'
    scales throughout: heun's second call of step 1 (at sigma_2) used step 1's scales."""
    identity = random_identity(mini_uniid, 14)
    one, positive, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=2)
    before, positive_before, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=1000)
    after, positive_after, _ = apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=0)
    whole = advanced(cn, one, positive, conds[1], 0, 5, steps=5, sampler="heun")["samples"]
    first = advanced(cn, before, positive_before, conds[1], 0, 2, steps=5, sampler="heun")
    second = advanced(cn, after, positive_after, conds[1], 2, 5, steps=5, sampler="heun", source=first)
    torch.testing.assert_close(second["samples"], whole, **CLOSE)


def test_merge_at_percent_needs_no_first_segment(cn, pack, mini_sdxl, mini_uniid, conds):
    """merge_at = percent is a noise level: a split whose parts come from separate Applies (no shared
    record, e.g. another model for the first part) equals one pass; merge_at = step would not."""
    identity = random_identity(mini_uniid, 15)
    kw = dict(merge_at="percent", merge_percent=0.7)

    def fresh():
        return apply(pack, mini_sdxl, conds[0], mini_uniid, identity, **kw)[:2]

    whole = advanced(cn, *fresh(), conds[1], 0, 6)["samples"]
    first = advanced(cn, *fresh(), conds[1], 0, 3)
    split = advanced(cn, *fresh(), conds[1], 3, 6, source=first)["samples"]
    torch.testing.assert_close(split, whole, **CLOSE)
    model, positive, state = apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=4)
    stepwise = advanced(cn, model, positive, conds[1], 0, 6)["samples"]
    first = advanced(
        cn, *apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=4)[:2], conds[1], 0, 3
    )
    restarted = advanced(cn, model, positive, conds[1], 3, 6, source=first)["samples"]
    assert not torch.allclose(restarted, stepwise, **CLOSE)


def test_img2img_counts_its_own_steps(cn, applied, conds, monkeypatch):
    """denoise < 1 runs its steps from a lower noise level; merge_step counts the steps it runs."""
    model, positive, state, tokens = applied
    loop = LoopTracker().install(monkeypatch)
    recorder = Recorder(model, [state], loop)
    cn.nodes.common_ksampler(
        recorder.model, 0, STEPS, 4.0, "euler", "normal", positive, conds[1], latent(), denoise=0.5
    )
    assert [c.loop for c in recorder.calls] == list(range(STEPS))
    for call in recorder.calls:
        expected(call, call.loop, call.rows_of(0))


def test_cfg1_and_batches(cn, applied, conds, monkeypatch):
    """cfg 1 runs only the positive rows (identity); a latent batch of 2 gives both rows the identity."""
    model, positive, state, tokens = applied
    loop = LoopTracker().install(monkeypatch)
    recorder = Recorder(model, [state], loop)
    ksampler(cn, recorder.model, positive, conds[1], cfg=1.0, batch=2)
    for call in recorder.calls:
        assert call.chunks == [0] and call.context.shape[0] == 2
        expected(call, call.loop, [0, 1])
        check_text_rows(call, [0, 1], tokens, call.loop)
    recorder = Recorder(model, [state], loop)
    ksampler(cn, recorder.model, positive, conds[1], batch=2)
    for call in recorder.calls:
        assert sorted(call.chunks) == [0, 1] and call.context.shape[0] == 4
        expected(call, call.loop, call.rows_of(0))


def test_two_applies_each_keep_their_rows_and_schedule(cn, pack, mini_sdxl, mini_uniid, conds, monkeypatch):
    """Two stacked Applies (other identities, other merge steps): each slot gives its identity to the
    rows of the final positive, scales its own spliced rows (A's moved behind B's) with its schedule."""
    a, b = random_identity(mini_uniid, 21), random_identity(mini_uniid, 22)
    model_a, positive_a, state_a = apply(pack, mini_sdxl, conds[0], mini_uniid, a, merge_step=1)
    model, positive, state_b = apply(pack, model_a, positive_a, mini_uniid, b, merge_step=3)
    assert (state_a.slot, state_b.slot) == (0, 1)
    loop = LoopTracker().install(monkeypatch)
    recorder = Recorder(model, [state_a, state_b], loop)
    ksampler(cn, recorder.model, positive, conds[1])
    assert len(recorder.calls) == STEPS
    for call in recorder.calls:
        rows = call.rows_of(0)
        for slot, merge in ((0, 1), (1, 3)):
            scale = 0.8 if call.loop < merge else 1.2
            assert call.scales[slot] == pytest.approx([scale] * 2)
            assert call.token_sets[slot] == [0 if r in rows else 1 for r in range(2)]
        row = rows[0]
        want_b = 0.5 if call.loop < 3 else 1.8
        want_a = 0.5 if call.loop < 1 else 1.8
        assert text_scale(call.context[row, 1:4], b.text_tokens_rescaled[0]) == pytest.approx(
            want_b, rel=1e-5
        )
        assert text_scale(call.context[row, 4:7], a.text_tokens_rescaled[0]) == pytest.approx(
            want_a, rel=1e-5
        )


def test_controlnet_sees_the_scaled_tokens(cn, comfy, applied, conds):
    """A (tiny, random) ControlNet applied to UniID's positive gets the same context as the UNet, with
    the identity rows already scaled for the step."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    from tests.comfyui.conftest import SDXL_MINI_UNET

    model, positive, state, tokens = applied
    inner = comfy.cldm.cldm.ControlNet(
        hint_channels=3, operations=comfy.ops.disable_weight_init, **SDXL_MINI_UNET
    )
    init_weights(inner, 7)

    class Spy(torch.nn.Module):
        def __init__(self, control) -> None:
            super().__init__()
            self.control = control
            self.dtype = control.dtype
            self.contexts: list[torch.Tensor] = []

        def forward(self, **kwargs):
            self.contexts.append(kwargs["context"].clone())
            return self.control(**kwargs)

    spy = Spy(inner)
    control = comfy.controlnet.ControlNet(spy, load_device=torch.device("cpu"))
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pos, neg = cn.nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, conds[1], control, image, 1.0, 0.0, 1.0
    )
    recorder = Recorder(model, [state])
    ksampler(cn, recorder.model, pos, neg)
    assert len(spy.contexts) == len(recorder.calls) == STEPS
    for step, (call, seen) in enumerate(zip(recorder.calls, spy.contexts, strict=True)):
        torch.testing.assert_close(seen, call.context, rtol=0, atol=0)
        check_text_rows(call, call.rows_of(0), tokens, step)


def test_edited_conditioning(cn, applied, conds):
    """Concat / Combine / Average / SetTimestepRange / SetArea / ZeroOut on UniID's positive: marked rows
    keep the identity and their step scale; rows from other conditioning (an all-zero copy of the
    positive used as the negative, the negative filling SetArea's area) get the zero-face set."""
    model, positive, state, tokens = applied
    other = random_conditioning(5)
    nodes = cn.nodes
    step_of = {}

    def run(cond):
        recorder = Recorder(model, [state])
        ksampler(cn, recorder.model, cond, conds[1])
        sigmas = cn.samplers.KSampler(model, STEPS, "cpu", "euler", "normal").sigmas.tolist()
        step_of.update({s: i for i, s in enumerate(sigmas)})
        return recorder.calls

    for call in run(nodes.ConditioningConcat().concat(positive, other)[0]):
        expected(call, step_of[call.sigma], call.rows_of(0))
        check_text_rows(call, call.rows_of(0), tokens, step_of[call.sigma])
        for row in call.rows_of(0):
            torch.testing.assert_close(call.context[row, 77:], other[0][0][0])
    for call in run(nodes.ConditioningConcat().concat(other, positive)[0]):
        expected(call, step_of[call.sigma], [])
        for row in call.rows_of(0):
            torch.testing.assert_close(call.context[row, 78:81], tokens)
    for call in run(nodes.ConditioningCombine().combine(positive, other)[0]):
        for chunk, (cond_index, row) in enumerate(
            zip(call.chunks, range(call.context.shape[0]), strict=True)
        ):
            ours = cond_index == 0 and not torch.equal(call.context[row], other[0][0][0])
            assert call.token_sets[0][row] == (0 if ours else 1), chunk
            if ours:
                check_text_rows(call, [row], tokens, step_of[call.sigma])
    blend = positive[0][0][0, 1:4] * 0.7 + other[0][0][0, 1:4] * 0.3
    for call in run(nodes.ConditioningAverage().addWeighted(positive, other, 0.7)[0]):
        expected(call, step_of[call.sigma], call.rows_of(0))
        check_text_rows(call, call.rows_of(0), blend, step_of[call.sigma])
    early = nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, 0.5)[0]
    late = nodes.ConditioningSetTimestepRange().set_range(other, 0.5, 1.0)[0]
    for call in run(nodes.ConditioningCombine().combine(early, late)[0]):
        identity_rows = [r for r in call.rows_of(0) if not torch.equal(call.context[r], other[0][0][0])]
        expected(call, step_of[call.sigma], identity_rows)
    recorder = Recorder(model, [state])
    ksampler(cn, recorder.model, positive, nodes.ConditioningZeroOut().zero_out(positive)[0])
    for step, call in enumerate(recorder.calls):
        expected(call, step, call.rows_of(0))
    area = nodes.ConditioningSetArea().append(positive, 32, 64, 0, 0, 1.0)[0]
    calls = run(area)
    assert any(call.context.shape[0] == 2 and sorted(call.chunks) == [0, 1] for call in calls)
    for call in calls:
        expected(call, step_of[call.sigma], call.rows_of(0))


def test_samplers_from_other_packs(cn, applied, conds, monkeypatch):
    """A sampler ComfyUI does not know: its calls after a step report count toward the next step (a
    wrapped heun's second call of the step before the merge gets the 'after' scales); one that never
    reports a step is placed call by call by its sigma."""
    import comfy.k_diffusion.sampling as k_sampling

    model, positive, state, _ = applied
    loop = LoopTracker().install(monkeypatch)
    custom = cn.custom
    sigmas = custom.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]

    def wrapped_heun(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        return k_sampling.sample_heun(
            model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable
        )

    def silent_euler(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        return k_sampling.sample_euler(
            model_k, x, sigmas, extra_args=extra_args, callback=None, disable=disable
        )

    for function in (wrapped_heun, silent_euler):
        recorder = Recorder(model, [state], loop)
        guider = custom.CFGGuider().get_guider(recorder.model, positive, conds[1], 4.0)[0]
        sampler = cn.samplers.KSAMPLER(function)
        custom.SamplerCustomAdvanced().sample(custom.Noise_RandomNoise(0), guider, sampler, sigmas, latent())
        for index, call in enumerate(recorder.calls):
            if function is silent_euler:
                step = call.loop
            else:
                step = call.loop + (index % 2 == 1 and call.loop < STEPS - 1)
            expected(call, step, call.rows_of(0))


def test_single_branch_weights(cn, pack, mini_sdxl, mini_uniid, conds, monkeypatch):
    """Text-branch-only weights: no attn2 patches, the text rows still follow the step schedule.
    Adapter-only weights: the prompt is only marked, its rows get the identity, nothing is scaled."""
    from uniid_core.identity import Identity
    from uniid_core.models.uniid import UniIDConfig, UniIDModel

    full = mini_uniid.model.config
    loop = LoopTracker().install(monkeypatch)
    for kind in ("text", "adapter"):
        config = UniIDConfig(
            num_text_tokens=3 if kind == "text" else None,
            num_adapter_tokens=4 if kind == "adapter" else None,
            adapter_hidden_dim=64 if kind == "adapter" else None,
            layer_widths=full.layer_widths if kind == "adapter" else {},
            text_depth=1,
            adapter_depth=1,
        )
        model = UniIDModel(config)
        init_weights(model, 9)
        model.refresh_fingerprint()
        weights = pack.sockets.UniIDWeights(model=model.eval().requires_grad_(False), source=kind)
        gen = torch.Generator().manual_seed(10)
        tokens = torch.randn(1, 3, 2048, generator=gen)
        identity = Identity(
            text_tokens=tokens if kind == "text" else None,
            text_tokens_rescaled=tokens if kind == "text" else None,
            adapter_tokens=torch.randn(1, 4, 2048, generator=gen) if kind == "adapter" else None,
            model_fingerprint=model.fingerprint,
        )
        patched, positive, state = apply(pack, mini_sdxl, conds[0], weights, identity)
        replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
        assert bool(replaces) == (kind == "adapter")
        recorder = Recorder(patched, [state], loop)
        ksampler(cn, recorder.model, positive, conds[1])
        for call in recorder.calls:
            if kind == "text":
                assert call.token_sets == [[]]
                check_text_rows(call, call.rows_of(0), tokens[0], call.loop)
            else:
                expected(call, call.loop, call.rows_of(0))
                torch.testing.assert_close(
                    call.context[call.rows_of(0)[0]], conds[0][0][0][0], rtol=0, atol=0
                )
