"""The attn2 patch on a small SDXL-layout UNet: 70 keys, row routing, schedule, clones, composition."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

OFFICIAL_ORDER = (
    [("input", b, i) for b in (4, 5) for i in range(2)]
    + [("input", b, i) for b in (7, 8) for i in range(10)]
    + [("output", b, i) for b in (0, 1, 2) for i in range(10)]
    + [("output", b, i) for b in (3, 4, 5) for i in range(2)]
    + [("middle", 0, i) for i in range(10)]
)
SAMPLE_SIGMAS = torch.tensor([10.0, 5.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def identity(uniid_weights, small_face_net):
    from uniid_core.identity import encode_identity

    gen = torch.Generator().manual_seed(5)
    faces = torch.rand(1, 3, 112, 112, generator=gen) * 2 - 1
    return encode_identity(uniid_weights.model, small_face_net, faces, class_word="man")


def _apply(pack, model, cond, weights, identity, clip, **kw):
    args = dict(
        merge_step=1,
        text_scale_before=0.5,
        text_scale_after=1.8,
        adapter_scale_before=0.8,
        adapter_scale_after=1.2,
        rescale="normalized",
        start_percent=0.0,
        end_percent=1.0,
    )
    args.update(kw)
    return pack.apply.UniIDApply().apply(model, cond, weights, identity, clip=clip, **args)


def _call(patcher, x, sigma, ctx, y, cond_or_uncond, sample_sigmas=SAMPLE_SIGMAS):
    options = copy.copy(patcher.model_options["transformer_options"])
    options["cond_or_uncond"] = list(cond_or_uncond)
    if sample_sigmas is not None:
        options["sample_sigmas"] = sample_sigmas
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=ctx, y=y, transformer_options=options)


def _inputs(batch, seed=0, length=77):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 8, 8, generator=gen),
        torch.randn(batch, length, 2048, generator=gen),
        torch.randn(batch, 2816, generator=gen),
    )


def test_layer_keys_follow_official_order(pack, small_sdxl):
    layers = pack.family.cross_attn_layers(small_sdxl)
    assert [layer.key for layer in layers] == OFFICIAL_ORDER
    assert len(layers) == 70
    assert {layer.width for layer in layers} == {64, 128}


def test_patch_covers_exactly_the_70_attn2_keys(pack, small_sdxl, small_clip, uniid_weights, identity):
    cond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    model, _ = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    replaces = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaces) == set(OFFICIAL_ORDER)
    assert ("middle", 1, 0) not in replaces
    assert all(isinstance(p, pack.patch.UniIDAttn2Replace) for p in replaces.values())
    assert [replaces[k].layer for k in OFFICIAL_ORDER] == list(range(70))
    assert "attn2" not in small_sdxl.model_options["transformer_options"].get("patches_replace", {})


def test_clone_is_cheap_and_weights_are_managed(pack, small_sdxl, small_clip, uniid_weights, identity):
    cond = [[torch.zeros(1, 77, 2048), {}]]
    model, _ = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    twin = model.clone()
    a = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    b = twin.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    assert a.state is b.state
    models = twin.model_patches_models()
    assert models and all(m is a.state.ip_patcher for m in models)
    assert isinstance(a.state.ip_patcher.model, pack.bundle.IPProjections)


def _reference_patch(weights, identity, layer_index, scale, kinds):
    """Official decoupled attention written out: per-row tokens, plain SDPA, per-row Frobenius rule."""
    k_w, v_w = weights.model.adapter_branch.ip_weights()[layer_index]
    pos, neg = identity.adapter_tokens.float(), weights.model.negative_adapter_tokens().float()

    def heads(t, n):
        b, length, c = t.shape
        return t.view(b, length, n, c // n).transpose(1, 2)

    def attn(q, k, v, n):
        out = F.scaled_dot_product_attention(heads(q, n), heads(k, n), heads(v, n))
        return out.transpose(1, 2).reshape(q.shape)

    def patch(q, k, v, extra):
        n = extra["n_heads"]
        text = attn(q, k, v, n)
        per = q.shape[0] // len(kinds)
        tokens = torch.cat([(neg if kind == 1 else pos).expand(per, -1, -1) for kind in kinds])
        ip = attn(q, tokens @ k_w.T, tokens @ v_w.T, n)
        ratio = text.norm(dim=(1, 2), keepdim=True) / ip.norm(dim=(1, 2), keepdim=True)
        return text + scale * ratio * ip

    return patch


@pytest.mark.parametrize(
    "kinds,sigma_value,adapter,text",
    [((1, 0), 7.0, 0.8, 0.5), ((0, 1), 3.0, 1.2, 1.8), ((0,), 3.0, 1.2, 1.8)],
)
def test_rows_and_schedule_match_official_formula(
    pack, small_sdxl, small_clip, uniid_weights, identity, kinds, sigma_value, adapter, text
):
    per = 2
    batch = per * len(kinds)
    x, ctx, y = _inputs(batch)
    cond = [[ctx[:1].clone(), {}]]
    model, positive = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    spliced = positive[0][0]
    rows = torch.cat([(ctx[:1] if kind == 1 else spliced).expand(per, -1, -1) for kind in kinds])
    sigma = torch.full((batch,), sigma_value)
    got = _call(model, x, sigma, rows, y, kinds)

    reference = small_sdxl.clone()
    for index, key in enumerate(OFFICIAL_ORDER):
        reference.set_model_attn2_replace(
            _reference_patch(uniid_weights, identity, index, adapter, kinds), *key
        )
    scaled = rows.clone()
    for i, kind in enumerate(k for k in kinds for _ in range(per)):
        if kind == 0:
            scaled[i, 1:4] *= text
    want = _call(reference, x, sigma, scaled, y, kinds, sample_sigmas=None)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_merge_schedule_per_call(pack, uniid_weights, identity):
    state = pack.patch.UniIDPatchState(
        adapter_tokens=identity.adapter_tokens,
        negative_tokens=uniid_weights.model.negative_adapter_tokens(),
        text_tokens=torch.ones(1, 3, 8),
        ip_patcher=None,
        schedule=pack.patch.MergeSchedule(1, 0.5, 1.8, 0.8, 1.2),
        rescale="add",
        sigma_start=8.0,
        sigma_end=0.5,
    )
    wrapper = pack.patch.UniIDApplyModelWrapper(state)
    seen = {}

    def executor(x, t, c_concat, c_crossattn, control, options, **kw):
        seen["ctx"], seen["info"] = c_crossattn, options[state.key]
        return x

    ctx = torch.cat([torch.zeros(2, 1, 8), torch.ones(2, 3, 8), torch.zeros(2, 2, 8)], 1)
    for sigma, adapter, text in [(9.0, 0.0, 0.5), (7.0, 0.8, 0.5), (5.0, 1.2, 1.8), (0.4, 0.0, 1.8)]:
        wrapper(
            executor,
            torch.zeros(2, 4, 8, 8),
            torch.full((2,), sigma),
            None,
            ctx,
            None,
            {"sample_sigmas": SAMPLE_SIGMAS, "cond_or_uncond": [1, 0]},
        )
        assert seen["info"].adapter_scale.flatten().tolist() == pytest.approx([adapter] * 2)
        assert seen["info"].rows.tolist() == [1, 0]
        assert torch.equal(seen["ctx"][:, 1:4], torch.full((2, 3, 8), text))
        assert torch.equal(seen["ctx"][:, [0, 4, 5]], torch.zeros(2, 3, 8))


def test_long_prompts_and_several_entries(pack, small_sdxl, small_clip, uniid_weights, identity, caplog):
    first = torch.randn(2, 154, 2048)
    second = torch.randn(2, 77, 2048)
    cond = [[first, {"pooled_output": torch.zeros(2, 1280)}], [second, {"strength": 0.5}]]
    model, positive = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    assert [c[0].shape for c in positive] == [first.shape, second.shape]
    tokens = positive[0][0][:, 1:4]
    assert torch.equal(positive[1][0][:, 1:4], tokens)
    assert torch.equal(positive[0][0][:, 77:], first[:, 77:])
    assert torch.equal(positive[0][0][:, 4:77], first[:, 1:74])
    assert "drops its last 3 token" in caplog.text
    x, _, y = _inputs(4, length=154)
    ctx = torch.cat([torch.randn(2, 154, 2048), positive[0][0]])
    out = _call(model, x, torch.full((4,), 3.0), ctx, y, [1, 0])
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_start_end_percent_split_the_conditioning(pack, small_sdxl, small_clip, uniid_weights, identity):
    embeds = torch.randn(1, 77, 2048)
    cond = [[embeds, {"start_percent": 0.1, "end_percent": 0.9}]]
    _, positive = _apply(
        pack, small_sdxl, cond, uniid_weights, identity, small_clip, start_percent=0.3, end_percent=0.6
    )
    ranges = sorted((c[1]["start_percent"], c[1]["end_percent"], torch.equal(c[0], embeds)) for c in positive)
    assert ranges == [(0.1, 0.3, True), (0.3, 0.6, False), (0.6, 0.9, True)]


class _Previous:
    """Another pack's attn2 replace: plain attention times 0.5, counting its calls."""

    calls = 0

    def __call__(self, q, k, v, extra):
        _Previous.calls += 1
        n = extra["n_heads"]
        b, length, c = q.shape
        out = F.scaled_dot_product_attention(*(t.view(b, -1, n, c // n).transpose(1, 2) for t in (q, k, v)))
        return 0.5 * out.transpose(1, 2).reshape(b, length, c)


def test_composes_with_previous_attn2_patch(pack, small_sdxl, small_clip, uniid_weights, identity):
    base = small_sdxl.clone()
    previous = _Previous()
    for key in OFFICIAL_ORDER:
        base.set_model_attn2_replace(previous, *key)
    x, ctx, y = _inputs(2)
    cond = [[ctx[:1], {}]]
    off, _ = _apply(
        pack,
        base,
        cond,
        uniid_weights,
        identity,
        small_clip,
        adapter_scale_before=0.0,
        adapter_scale_after=0.0,
        rescale="add",
    )
    sigma = torch.full((2,), 3.0)
    _Previous.calls = 0
    torch.testing.assert_close(_call(off, x, sigma, ctx, y, [1, 0]), _call(base, x, sigma, ctx, y, [1, 0]))
    assert _Previous.calls == 140
    on, _ = _apply(pack, base, cond, uniid_weights, identity, small_clip)
    twice, _ = _apply(pack, on, cond, uniid_weights, identity, small_clip)
    _Previous.calls = 0
    out_on = _call(on, x, sigma, ctx, y, [1, 0])
    out_twice = _call(twice, x, sigma, ctx, y, [1, 0])
    assert _Previous.calls == 140
    assert not torch.allclose(out_on, _call(base, x, sigma, ctx, y, [1, 0]), atol=1e-3)
    assert not torch.allclose(out_twice, out_on, atol=1e-3)
    inner = twice.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 9)]
    assert isinstance(inner.previous, pack.patch.UniIDAttn2Replace)
    assert isinstance(inner.previous.previous, _Previous)


def test_mask_limits_the_adapter(pack, small_sdxl, small_clip, uniid_weights, identity):
    x, ctx, y = _inputs(1)
    cond = [[ctx, {}]]
    sigma = torch.full((1,), 3.0)
    plain = _call(small_sdxl, x, sigma, ctx, y, [0])
    empty, _ = _apply(
        pack, small_sdxl, cond, uniid_weights, identity, small_clip, mask=torch.zeros(1, 64, 64)
    )
    torch.testing.assert_close(_call(empty, x, sigma, ctx, y, [0]), plain)
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1.0
    masked, _ = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip, mask=half)
    full, _ = _apply(pack, small_sdxl, cond, uniid_weights, identity, small_clip)
    out = _call(masked, x, sigma, ctx, y, [0])
    assert torch.isfinite(out).all() and not torch.allclose(out, plain)
    assert not torch.allclose(out, _call(full, x, sigma, ctx, y, [0]))
