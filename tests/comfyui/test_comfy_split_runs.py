"""Which runs continue an earlier run's step count: only one that adds no noise to the latent it returned.

The same UniID Apply (ComfyUI caches its output, so later prompts reuse it) first runs a
KSamplerAdvanced 0->3 of 6 with leftover noise; later graphs that start at the sigma it stopped at must
still count their own steps unless they continue exactly that latent without noise. Real KSampler and
KSamplerAdvanced graphs on the mini SDXL-layout UNet, 8x8 latents; merge step 2 of the official scales.
"""

from __future__ import annotations

import pytest
import torch

from tests.comfyui.conftest import APPLY_ARGS, random_identity
from tests.comfyui.recording import Recorder

CLOSE = dict(rtol=1e-5, atol=1e-5)
MERGE = 2


def _apply(pack, mini_sdxl, mini_uniid, positive, identity):
    import comfy.patcher_extension as ext

    args = {**APPLY_ARGS, "merge_step": MERGE}
    model, positive = pack.apply.UniIDApply.execute(mini_sdxl, positive, mini_uniid, identity, **args)
    state = ext.get_wrappers_with_key(ext.WrappersMP.SAMPLER_SAMPLE, "uniid", model.model_options, True)
    return model, positive, state[-1].state


def _advanced(cn, model, positive, negative, latent, start, end, add_noise, seed=0):
    """KSamplerAdvanced, 6 steps euler; leftover noise kept unless the run ends the schedule."""
    (out,) = cn.nodes.KSamplerAdvanced().sample(
        model,
        "enable" if add_noise else "disable",
        seed,
        6,
        4.0,
        "euler",
        "normal",
        positive,
        negative,
        latent,
        start,
        end,
        "enable" if end < 6 else "disable",
    )
    return out


@pytest.fixture()
def setup(pack, mini_sdxl, mini_uniid, conds):
    identity = random_identity(mini_uniid, 71)
    source = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(72))}
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    return identity, source, empty


def test_img2img_after_a_leftover_run_counts_its_own_steps(cn, pack, mini_sdxl, mini_uniid, conds, setup):
    """KSampler 3 steps, denoise 0.5 (the last 4 sigmas of a 6-step schedule: it starts exactly where
    the 0->3 run stopped) adds noise, so it is never a continuation: the same image and the same scales
    per call (0.8, 0.8, then 1.2 from its step 2) after the leftover run as before it."""
    identity, source, empty = setup
    model, positive, state = _apply(pack, mini_sdxl, mini_uniid, conds[0], identity)
    img2img = cn.samplers.KSampler(model, 3, "cpu", "euler", "normal", denoise=0.5).sigmas
    split = cn.samplers.KSampler(model, 6, "cpu", "euler", "normal").sigmas
    assert float(img2img[0]) == pytest.approx(float(split[3]), rel=1e-6)

    def run():
        recorder = Recorder(model, [state])
        out = cn.nodes.common_ksampler(
            recorder.model, 1, 3, 4.0, "euler", "normal", positive, conds[1], source, denoise=0.5
        )
        return out[0]["samples"], [call.scales[0][0] for call in recorder.calls]

    alone, scales = run()
    assert scales == pytest.approx([0.8, 0.8, 1.2])
    _advanced(cn, model, positive, conds[1], empty, 0, 3, add_noise=True)
    after, scales_after = run()
    assert scales_after == pytest.approx(scales)
    torch.testing.assert_close(after, alone, **CLOSE)


def test_noisy_start_at_step_after_a_leftover_run(cn, pack, mini_sdxl, mini_uniid, conds, setup):
    """KSamplerAdvanced 3->6 with add_noise enable (img2img) gives the same image before and after an
    unrelated 0->3 leftover run with the same Apply."""
    identity, source, empty = setup
    model, positive, _ = _apply(pack, mini_sdxl, mini_uniid, conds[0], identity)
    fresh = _advanced(cn, model, positive, conds[1], source, 3, 6, add_noise=True, seed=7)["samples"]
    _advanced(cn, model, positive, conds[1], empty, 0, 3, add_noise=True)
    again = _advanced(cn, model, positive, conds[1], source, 3, 6, add_noise=True, seed=7)["samples"]
    torch.testing.assert_close(again, fresh, **CLOSE)


def test_continuation_needs_the_latent_the_first_part_returned(cn, pack, mini_sdxl, mini_uniid, conds, setup):
    """3->6 without noise continues the 0->3 run (same image as one 0->6 pass) only from the latent that
    run returned; from another latent it counts its own steps, like the same run on a fresh Apply."""
    identity, source, empty = setup
    model, positive, _ = _apply(pack, mini_sdxl, mini_uniid, conds[0], identity)
    whole = _advanced(cn, model, positive, conds[1], empty, 0, 6, add_noise=True)["samples"]
    first = _advanced(cn, model, positive, conds[1], empty, 0, 3, add_noise=True)
    other = _advanced(cn, model, positive, conds[1], source, 3, 6, add_noise=False)["samples"]
    continued = _advanced(cn, model, positive, conds[1], first, 3, 6, add_noise=False)["samples"]
    torch.testing.assert_close(continued, whole, **CLOSE)
    unrecorded, positive_unrecorded, _ = _apply(pack, mini_sdxl, mini_uniid, conds[0], identity)
    own = _advanced(cn, unrecorded, positive_unrecorded, conds[1], source, 3, 6, add_noise=False)["samples"]
    torch.testing.assert_close(other, own, **CLOSE)
    restarted = _advanced(cn, unrecorded, positive_unrecorded, conds[1], first, 3, 6, add_noise=False)
    assert (restarted["samples"] - whole).abs().max() > 1e-3
