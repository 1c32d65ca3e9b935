"""The UniID patch on SDXL-layout UNets: 70 keys, the official formula, marks, ranges, masks, composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.comfyui.conftest import (
    APPLY_ARGS,
    SDXL_MINI_UNET,
    build_sdxl,
    random_conditioning,
    random_identity,
)
from tests.comfyui.recording import Recorder, one_evaluation

OFFICIAL_ORDER = (
    [("input", b, i) for b in (4, 5) for i in range(2)]
    + [("input", b, i) for b in (7, 8) for i in range(10)]
    + [("output", b, i) for b in (0, 1, 2) for i in range(10)]
    + [("output", b, i) for b in (3, 4, 5) for i in range(2)]
    + [("middle", 0, i) for i in range(10)]
)


@pytest.fixture(scope="module")
def identity(uniid_weights, small_face_net):
    from uniid_core.identity import encode_identity

    gen = torch.Generator().manual_seed(5)
    faces = torch.rand(1, 3, 112, 112, generator=gen) * 2 - 1
    return encode_identity(uniid_weights.model, small_face_net, faces, class_word="man")


def _apply(pack, model, cond, weights, identity, clip=None, **kw):
    return pack.apply.UniIDApply.execute(model, cond, weights, identity, clip=clip, **{**APPLY_ARGS, **kw})


def _state(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)].state


def test_layer_keys_follow_official_order(pack, small_sdxl):
    from uniid_core.family import SDXL

    layers = pack.base_model.cross_attn_layers(small_sdxl)
    assert [layer.key for layer in layers] == OFFICIAL_ORDER
    assert len(layers) == 70
    spec = [(layer.index, layer.key, layer.level) for layer in SDXL.cross_attn_layers]
    assert [(layer.index, layer.key, layer.level) for layer in layers] == spec
    assert {layer.width for layer in layers} == {64, 128}
    levels = {layer.key[:2]: layer.level for layer in layers}
    assert levels == {
        **{("input", b): 1 for b in (4, 5)},
        **{("input", b): 2 for b in (7, 8)},
        **{("output", b): 2 for b in (0, 1, 2)},
        **{("output", b): 1 for b in (3, 4, 5)},
        ("middle", 0): 2,
    }


def test_patch_covers_exactly_the_70_attn2_keys(pack, small_sdxl, small_clip, uniid_weights, identity):
    cond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    model, _ = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    replaces = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaces) == set(OFFICIAL_ORDER)
    assert ("middle", 1, 0) not in replaces
    assert all(isinstance(p, pack.patch.UniIDAttn2Replace) for p in replaces.values())
    assert [replaces[k].layer for k in OFFICIAL_ORDER] == list(range(70))
    assert "attn2" not in small_sdxl.model_options["transformer_options"].get("patches_replace", {})
    wrappers = model.model_options["transformer_options"]["wrappers"]
    assert {kind for kind, by_key in wrappers.items() if "uniid" in by_key} == {
        "sampler_sample",
        "predict_noise",
        "calc_cond_batch",
        "apply_model",
    }


def test_clone_is_cheap_and_weights_are_managed(pack, small_sdxl, small_clip, uniid_weights, identity):
    cond = [[torch.zeros(1, 77, 2048), {}]]
    model, _ = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    twin = model.clone()
    a = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    b = twin.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    assert a.state is b.state
    models = twin.model_patches_models()
    assert models and all(m is a.state.ip_patcher for m in models)
    assert isinstance(a.state.ip_patcher.model, pack.managed.IPProjections)


def _reference_patch(weights, identity, layer_index, scale):
    """Official decoupled attention written out for a CFGGuider batch: identity tokens for its
    positive rows (cond index 0), zero-face tokens for the negative rows, per-row Frobenius rule."""
    k_w, v_w = (w.double() for w in weights.model.adapter_branch.ip_weights()[layer_index])
    scale = float(torch.tensor(scale, dtype=torch.float32))  # adapter scales are float32 tensors
    tokens = {0: identity.adapter_tokens.double(), 1: weights.model.negative_adapter_tokens().double()}

    def attn(q, k, v, n):
        def heads(t):
            return t.view(t.shape[0], t.shape[1], n, -1).transpose(1, 2)

        return F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(q.shape)

    def patch(q, k, v, extra):
        n = extra["n_heads"]
        text = attn(q, k, v, n)
        per = q.shape[0] // len(extra["cond_or_uncond"])
        rows = torch.cat([tokens[c].expand(per, -1, -1) for c in extra["cond_or_uncond"]])
        ip = attn(q, rows @ k_w.T, rows @ v_w.T, n)
        ratio = text.norm(dim=(1, 2), keepdim=True) / ip.norm(dim=(1, 2), keepdim=True)
        return text + scale * ratio * ip

    return patch


@pytest.mark.parametrize("merge_step,adapter,text", [(1, 0.8, 0.5), (0, 1.2, 1.8)])
def test_patched_model_matches_official_formula(comfy, pack, merge_step, adapter, text):
    """One guided evaluation through ComfyUI's CFGGuider, in float64 so that float rounding cannot hide
    or fake a difference: the patched UNet equals the official formula (per-row tokens, per-row norms,
    text rows scaled) written out as a plain attn2 patch."""
    from tests.comfyui.conftest import small_uniid_model

    model = build_sdxl(comfy, SDXL_MINI_UNET, dtype=torch.float64)
    layers = pack.base_model.cross_attn_layers(model)
    weights = pack.sockets.UniIDWeights(small_uniid_model([layer.width for layer in layers], seed=8), "f64")
    identity = random_identity(weights, 31)
    positive, negative = random_conditioning(32), random_conditioning(33)
    patched, spliced = _apply(pack, model, positive, weights, identity, merge_step=merge_step)
    got = one_evaluation(patched, spliced, negative, sigma=5.0)

    reference = model.clone()
    for index, layer in enumerate(layers):
        reference.set_model_attn2_replace(_reference_patch(weights, identity, index, adapter), *layer.key)
    scaled = spliced[0][0].clone()
    scaled[:, 1:4] = scaled[:, 1:4] * text
    want = one_evaluation(reference, [[scaled, spliced[0][1]]], negative, sigma=5.0)
    plain = one_evaluation(model, positive, negative, sigma=5.0)
    assert (got - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_long_prompts_and_several_entries(pack, mini_sdxl, mini_uniid, caplog):
    identity = random_identity(mini_uniid, 41)
    first = torch.randn(1, 154, 2048)
    second = torch.randn(1, 77, 2048)
    pooled = torch.zeros(1, 1280)
    cond = [[first, {"pooled_output": pooled}], [second, {"pooled_output": pooled, "strength": 0.5}]]
    model, positive = _apply(pack, mini_sdxl, cond, mini_uniid, identity)
    assert [c[0].shape for c in positive] == [first.shape, second.shape]
    tokens = positive[0][0][:, 1:4]
    torch.testing.assert_close(tokens[0], identity.text_tokens_rescaled[0])
    assert torch.equal(positive[1][0][:, 1:4], tokens)
    assert torch.equal(positive[0][0][:, 77:], first[:, 77:])
    assert torch.equal(positive[0][0][:, 4:77], first[:, 1:74])
    assert "drops its last 3 token" in caplog.text
    marks = [entry[1]["uniid_marks"] for entry in positive]
    assert all(len(m) == 1 and (m[0].role, m[0].start, m[0].count) == ("positive", 1, 3) for m in marks)
    recorder = Recorder(model, [_state(model)])
    out = one_evaluation(recorder.model, positive, random_conditioning(42), sigma=3.0)
    assert torch.isfinite(out).all()
    assert [call.token_sets[0] for call in recorder.calls] == [
        [0 if c == 0 else 1 for c in recorder.calls[0].chunks]
    ]


def test_start_end_percent(comfy, pack, mini_sdxl, mini_uniid):
    """The text tokens go only into the [start, end] part of each entry; the adapter scale is 0 outside it."""
    identity = random_identity(mini_uniid, 43)
    embeds = torch.randn(1, 77, 2048)
    cond = [[embeds, {"start_percent": 0.1, "end_percent": 0.9}]]
    _, positive = _apply(pack, mini_sdxl, cond, mini_uniid, identity, start_percent=0.3, end_percent=0.6)
    ranges = sorted((c[1]["start_percent"], c[1]["end_percent"], torch.equal(c[0], embeds)) for c in positive)
    assert ranges == [(0.1, 0.3, True), (0.3, 0.6, False), (0.6, 0.9, True)]
    model, positive = _apply(
        pack, mini_sdxl, random_conditioning(44), mini_uniid, identity, start_percent=0.3, end_percent=0.6
    )
    sampling = mini_sdxl.get_model_object("model_sampling")
    high, low = (float(sampling.percent_to_sigma(p)) for p in (0.3, 0.6))
    for sigma in (high * 1.5, (high + low) / 2, low / 2):
        recorder = Recorder(model, [_state(model)])
        one_evaluation(recorder.model, positive, random_conditioning(45), sigma=sigma)
        (call,) = recorder.calls
        inside = low <= sigma <= high
        assert call.scales[0] == pytest.approx([0.8 if inside else 0.0] * len(call.scales[0]))


class _Previous:
    """Another pack's attn2 replace: plain attention times 0.5, counting its calls."""

    calls = 0

    def __call__(self, q, k, v, extra):
        _Previous.calls += 1
        n = extra["n_heads"]
        b, length, c = q.shape
        out = F.scaled_dot_product_attention(*(t.view(b, -1, n, c // n).transpose(1, 2) for t in (q, k, v)))
        return 0.5 * out.transpose(1, 2).reshape(b, length, c)


def test_composes_with_previous_attn2_patch(pack, mini_sdxl, mini_uniid):
    identity = random_identity(mini_uniid, 46)
    base = mini_sdxl.clone()
    previous = _Previous()
    layers = pack.base_model.cross_attn_layers(mini_sdxl)
    for layer in layers:
        base.set_model_attn2_replace(previous, *layer.key)
    cond, negative = random_conditioning(47), random_conditioning(48)
    off_scales = dict(
        text_scale_before=1.0, text_scale_after=1.0, adapter_scale_before=0.0, adapter_scale_after=0.0
    )
    off, off_positive = _apply(pack, base, cond, mini_uniid, identity, rescale="add", **off_scales)
    plain = one_evaluation(base, off_positive, negative, sigma=3.0)
    _Previous.calls = 0
    torch.testing.assert_close(one_evaluation(off, off_positive, negative, sigma=3.0), plain)
    assert _Previous.calls == len(layers)
    on, on_positive = _apply(pack, base, cond, mini_uniid, identity)
    twice, twice_positive = _apply(pack, on, on_positive, mini_uniid, identity)
    _Previous.calls = 0
    out_on = one_evaluation(on, on_positive, negative, sigma=3.0)
    out_twice = one_evaluation(twice, twice_positive, negative, sigma=3.0)
    assert _Previous.calls == 2 * len(layers)
    assert not torch.allclose(out_on, one_evaluation(base, on_positive, negative, sigma=3.0), atol=1e-3)
    assert not torch.allclose(out_twice, out_on, atol=1e-3)
    inner = twice.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)]
    assert isinstance(inner.previous, pack.patch.UniIDAttn2Replace)
    assert isinstance(inner.previous.previous, _Previous)
    assert (inner.slot, inner.previous.slot) == (1, 0)


def test_mask_limits_the_adapter(pack, mini_sdxl, mini_uniid):
    """A zero mask leaves the adapter out (text tokens still act); half a mask differs from none."""
    identity = random_identity(mini_uniid, 49)
    cond, negative = random_conditioning(50), random_conditioning(51)
    no_adapter, positive = _apply(
        pack, mini_sdxl, cond, mini_uniid, identity, adapter_scale_before=0.0, adapter_scale_after=0.0
    )
    text_only = one_evaluation(no_adapter, positive, negative, sigma=3.0)
    empty, positive = _apply(pack, mini_sdxl, cond, mini_uniid, identity, mask=torch.zeros(1, 64, 64))
    torch.testing.assert_close(one_evaluation(empty, positive, negative, sigma=3.0), text_only)
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1.0
    masked, positive = _apply(pack, mini_sdxl, cond, mini_uniid, identity, mask=half)
    full, _ = _apply(pack, mini_sdxl, cond, mini_uniid, identity)
    out = one_evaluation(masked, positive, negative, sigma=3.0)
    assert torch.isfinite(out).all() and not torch.allclose(out, text_only)
    assert not torch.allclose(out, one_evaluation(full, positive, negative, sigma=3.0))


def test_per_layer_path_reads_nothing_from_the_device(pack, mini_sdxl, mini_uniid, monkeypatch):
    """No host-device sync in the 11 attn2 patches: while they run, reading a tensor's value fails."""
    identity = random_identity(mini_uniid, 52)
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1.0
    model, positive = _apply(pack, mini_sdxl, random_conditioning(53), mini_uniid, identity, mask=half)
    inside = []
    original = {}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        original[name] = getattr(torch.Tensor, name)

        def guard(*args, _name=name, **kwargs):
            if inside:
                raise AssertionError(f"Tensor.{_name} called in the per-layer path")
            return original[_name](*args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guard)
    call = pack.patch.UniIDAttn2Replace.__call__

    def watched(self, *args, **kwargs):
        inside.append(True)
        try:
            return call(self, *args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(pack.patch.UniIDAttn2Replace, "__call__", watched)
    out = one_evaluation(model, positive, random_conditioning(54), sigma=3.0)
    assert torch.isfinite(out).all()
