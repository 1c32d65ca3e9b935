"""UniID with conditioning areas: the mask follows the window ComfyUI crops, area fill-ins keep their rows.

ComfyUI runs an entry with an area (ConditioningSetArea, ConditioningSetMask with "mask bounds") on that
window of the latent, and adds a copy with the same area to the other cond list when that list has none
(create_cond_with_same_area_if_none). Real KSampler graphs on the mini SDXL-layout UNet, 16x16 latents.
"""

from __future__ import annotations

import pytest
import torch

from tests.comfyui.conftest import APPLY_ARGS, random_identity
from tests.comfyui.recording import SCALES, Recorder, text_scale

CLOSE = dict(rtol=1e-5, atol=1e-5)
SIZE = 16  # latent side; the image is 8x that


def _apply(pack, model, positive, weights, identity, **kw):
    import comfy.patcher_extension as ext

    args = {**APPLY_ARGS, **kw}
    model, positive = pack.apply.UniIDApply.execute(model, positive, weights, identity, **args)
    state = ext.get_wrappers_with_key(ext.WrappersMP.SAMPLER_SAMPLE, "uniid", model.model_options, True)
    return model, positive, state[-1].state


def _sample(cn, model, positive, negative, steps: int = 3) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, SIZE, SIZE)}
    out = cn.nodes.common_ksampler(model, 0, steps, 4.0, "euler", "normal", positive, negative, latent)
    return out[0]["samples"]


def _half(left: bool) -> torch.Tensor:
    """An image-size mask that is 1 on the left (or right) half."""
    mask = torch.zeros(1, SIZE * 8, SIZE * 8)
    mask[:, :, : SIZE * 4] = 1.0
    return mask if left else 1.0 - mask


def _area(cn, cond: list, left: bool) -> list:
    """ConditioningSetArea on the left or right half of the image."""
    return cn.nodes.ConditioningSetArea().append(cond, SIZE * 4, SIZE * 8, 0 if left else SIZE * 4, 0, 1.0)[0]


@pytest.fixture(scope="module")
def identity(mini_uniid):
    return random_identity(mini_uniid, 61)


class RegionRecorder(Recorder):
    """Also keeps each call's UNet input and the region mask every level's layers got (slot 0)."""

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        regions = transformer_options["uniid"][0].regions
        out = super().__call__(executor, x, timesteps, context, y, control, transformer_options, **kwargs)
        self.calls[-1].x = x.detach().clone()
        self.calls[-1].regions = None if regions is None else [grid.detach().clone() for grid in regions]
        return out


def test_mask_is_each_rows_area_window(cn, pack, mini_sdxl, mini_uniid, conds, identity):
    """Left-half UniID mask; the positive is a left-area and a right-area entry (ConditioningCombine), so
    ComfyUI batches rows of both windows (and the negative's fill-ins) in one call: a row on the left
    window gets an all-one mask at every level, a row on the right window an all-zero one."""
    model, positive, state = _apply(pack, mini_sdxl, conds[0], mini_uniid, identity, mask=_half(True))
    halves = cn.nodes.ConditioningCombine().combine(_area(cn, positive, True), _area(cn, positive, False))[0]
    recorder = RegionRecorder(model, [state])
    _sample(cn, recorder.model, halves, conds[1], steps=2)
    whole = {c.sigma: c.x for c in recorder.calls if c.x.shape[-1] == SIZE}
    windows = [c for c in recorder.calls if c.x.shape[-1] == SIZE // 2]
    assert whole and windows
    mixed = 0
    for call in windows:
        full = whole[call.sigma]
        sides = []
        for row in range(call.x.shape[0]):
            left = torch.equal(call.x[row], full[0, :, :, : SIZE // 2])
            assert left or torch.equal(call.x[row], full[0, :, :, SIZE // 2 :])
            sides.append(left)
            for level, grid in enumerate(call.regions):
                assert grid.shape[1] == -(-SIZE // 2**level) * -(-SIZE // 2 // 2**level)
                assert torch.equal(grid[row], torch.full_like(grid[row], float(left))), (row, level)
        mixed += len(set(sides)) == 2
    assert mixed, "no call batched rows of both windows"
    for call in recorder.calls:
        if call.x.shape[-1] == SIZE:
            for level, grid in enumerate(call.regions):
                side = SIZE // 2**level
                want = torch.zeros(grid.shape[0], side, side, 1)
                want[:, :, : side // 2] = 1.0
                assert torch.equal(grid, want.reshape(grid.shape)), level


@pytest.mark.parametrize("left", [True, False])
def test_area_run_sees_the_mask_inside_its_area(cn, pack, mini_sdxl, mini_uniid, conds, identity, left):
    """Both prompts on one half (ConditioningSetArea) and a left-half UniID mask: every UNet call is that
    half, so the image equals the run without a mask on the left half and the run with an all-zero
    mask (no adapter) on the right half."""

    def run(**kw):
        model, positive, _ = _apply(pack, mini_sdxl, conds[0], mini_uniid, identity, **kw)
        return _sample(cn, model, _area(cn, positive, left), _area(cn, conds[1], left))

    masked = run(mask=_half(True))
    same = run() if left else run(mask=torch.zeros(1, SIZE * 8, SIZE * 8))
    other = run(mask=torch.zeros(1, SIZE * 8, SIZE * 8)) if left else run()
    torch.testing.assert_close(masked, same, **CLOSE)
    assert (masked - other).abs().max() > 1e-2


def test_mask_bounds_with_the_same_mask(cn, pack, mini_sdxl, mini_uniid, conds, identity):
    """README's two-people setup: ConditioningSetMask (mask bounds) with a left-half mask on both prompts
    and the same mask on UniID Apply: inside the bounds the mask is all one, so the image equals the one
    without UniID's mask, and differs from an all-zero mask."""
    set_mask = cn.nodes.ConditioningSetMask().append

    def run(**kw):
        model, positive, _ = _apply(pack, mini_sdxl, conds[0], mini_uniid, identity, **kw)
        bounded = set_mask(positive, _half(True), "mask bounds", 1.0)[0]
        return _sample(cn, model, bounded, set_mask(conds[1], _half(True), "mask bounds", 1.0)[0])

    masked = run(mask=_half(True))
    torch.testing.assert_close(masked, run(), **CLOSE)
    assert (masked - run(mask=torch.zeros(1, SIZE * 8, SIZE * 8))).abs().max() > 1e-2


def test_area_fill_ins_run_what_they_carry(cn, pack, mini_sdxl, mini_uniid, conds, identity):
    """A negative with an area makes ComfyUI add a positive-list copy that runs UniID's positive in that
    area: its rows get the identity and the step's text scale. A positive with an area makes a
    negative-list copy with the positive's options that runs the negative: zero-face rows, negative
    text. With full-image areas the copies duplicate the plain entries, so the image is unchanged."""
    model, positive, state = _apply(pack, mini_sdxl, conds[0], mini_uniid, identity, merge_step=1)
    tokens = identity.text_tokens_rescaled[0]
    negative = conds[1][0][0][0]
    for pos, neg, copied_to in (
        (positive, _area(cn, conds[1], False), 0),
        (_area(cn, positive, True), conds[1], 1),
    ):
        recorder = RegionRecorder(model, [state])
        _sample(cn, recorder.model, pos, neg, steps=2)
        sigmas = sorted({c.sigma for c in recorder.calls}, reverse=True)
        assert any(c.x.shape[-1] == SIZE // 2 and copied_to in c.chunks for c in recorder.calls)
        for call in recorder.calls:
            step = sigmas.index(call.sigma)
            want = SCALES["text_scale_before"] if step < 1 else SCALES["text_scale_after"]
            for row, kind in enumerate(call.token_sets[0]):
                assert kind == (0 if row in call.rows_of(0) else 1), (call.chunks, row)
                if kind == 0:
                    assert text_scale(call.context[row, 1:4], tokens) == pytest.approx(want, rel=1e-5)
                else:
                    torch.testing.assert_close(call.context[row], negative, rtol=0, atol=0)
    plain = _sample(cn, model, positive, conds[1])
    whole = cn.nodes.ConditioningSetArea().append
    torch.testing.assert_close(
        _sample(cn, model, positive, whole(conds[1], SIZE * 8, SIZE * 8, 0, 0, 1.0)[0]), plain, **CLOSE
    )
    torch.testing.assert_close(
        _sample(cn, model, whole(positive, SIZE * 8, SIZE * 8, 0, 0, 1.0)[0], conds[1]), plain, **CLOSE
    )
