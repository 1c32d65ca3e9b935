"""The diffusers UniID attention processor on a tiny random UNet: math, install, scales, training."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from uniid_core.diffusers_processor import (
    UniIDAttnProcessor,
    install_uniid_processors,
    set_adapter_scale,
    uniid_processors,
)
from uniid_core.errors import CheckpointError, ModelFamilyError, UniIDError

CONTEXT = 32
M = 4


def _tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=CONTEXT,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    return unet.eval()


def _cross_widths(unet) -> list[int]:
    modules = dict(unet.named_modules())
    names = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    return [modules[n.removesuffix(".processor")].to_k.out_features for n in names]


class _Config:
    num_adapter_tokens = M


class _Branch(nn.Module):
    """Only the contract's ip_weights() (exercises the generic install path)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.k = nn.ParameterList(nn.Parameter(torch.randn(w, CONTEXT) * 0.2) for w in widths)
        self.v = nn.ParameterList(nn.Parameter(torch.randn(w, CONTEXT) * 0.2) for w in widths)

    def ip_weights(self):
        return list(zip(self.k, self.v, strict=True))


class _Model(nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.config = _Config()
        self.adapter_branch = _Branch(widths)


def _inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(batch, 4, 8, 8, generator=gen)
    context = torch.randn(batch, 10 + M, CONTEXT, generator=gen)
    return sample, context


def test_processor_matches_the_official_formula_on_one_layer():
    unet = _tiny_unet()
    model = _Model(_cross_widths(unet))
    install_uniid_processors(unet, model, rescale="normalized", scale=0.8)
    name = next(n for n in unet.attn_processors if n.endswith("attn2.processor"))
    attn = dict(unet.named_modules())[name.removesuffix(".processor")]
    processor = attn.processor
    assert isinstance(processor, UniIDAttnProcessor)
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 16, attn.to_q.in_features, generator=gen)
    _, context = _inputs()
    with torch.no_grad():
        got = attn(hidden, encoder_hidden_states=context)
        text, ident = context[:, :-M], context[:, -M:]
        q, k, v = attn.to_q(hidden), attn.to_k(text), attn.to_v(text)
        k_ip, v_ip = ident @ processor.to_k_ip.weight.t(), ident @ processor.to_v_ip.weight.t()

        def mha(q, k, v):
            b, lq, c = q.shape
            d = c // attn.heads
            qh, kh, vh = (x.view(b, -1, attn.heads, d).transpose(1, 2) for x in (q, k, v))
            w = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
            return (w @ vh).transpose(1, 2).reshape(b, lq, c)

        h, ip = mha(q, k, v), mha(q, k_ip, v_ip)
        ratio = h.flatten(1).norm(dim=1) / ip.flatten(1).norm(dim=1)
        expected = attn.to_out[0](h + 0.8 * ratio[:, None, None] * ip)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scale_zero_equals_stock_attention_on_the_text_context():
    unet = _tiny_unet()
    sample, context = _inputs()
    added = {}
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor2_0())
        stock = unet(sample, 10, encoder_hidden_states=context[:, :-M], added_cond_kwargs=added).sample
        install_uniid_processors(unet, _Model(_cross_widths(unet)), scale=1.0)
        with_id = unet(sample, 10, encoder_hidden_states=context).sample
        set_adapter_scale(unet, 0.0)
        zero = unet(sample, 10, encoder_hidden_states=context).sample
        set_adapter_scale(unet, torch.tensor([0.0, 1.0]))
        per_row = unet(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(zero, stock, atol=1e-5, rtol=1e-5)
    assert (with_id - stock).abs().max() > 1e-3
    torch.testing.assert_close(per_row[0], stock[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_row[1], with_id[1], atol=1e-5, rtol=1e-5)


def test_install_order_counts_and_widths():
    unet = _tiny_unet()
    widths = _cross_widths(unet)
    model = _Model(widths)
    installed = install_uniid_processors(unet, model, rescale="add", scale=1.2)
    ours = uniid_processors(unet)
    assert (
        len(ours) == len(widths) == len([p for p in installed.values() if isinstance(p, UniIDAttnProcessor)])
    )
    for processor, (k, _) in zip(ours, model.adapter_branch.ip_weights(), strict=True):
        assert processor.to_k_ip.weight is k
        assert processor.rescaler.strategy == "add" and processor.scale == 1.2 and processor.num_tokens == M
    self_attn = [p for n, p in unet.attn_processors.items() if n.endswith("attn1.processor")]
    assert self_attn and not any(isinstance(p, UniIDAttnProcessor) for p in self_attn)
    set_adapter_scale(unet, 0.5)
    assert all(p.scale == 0.5 for p in uniid_processors(unet))

    with pytest.raises(ModelFamilyError, match="cross-attention layers"):
        install_uniid_processors(_tiny_unet(), _Model(widths + [16]))
    with pytest.raises(CheckpointError, match="needs"):
        install_uniid_processors(
            _tiny_unet(), _Model(list(reversed(widths)) if len(set(widths)) > 1 else [8] * 3)
        )
    with pytest.raises(UniIDError, match="no UniID processors"):
        set_adapter_scale(_tiny_unet(), 1.0)


def test_too_short_context_is_a_clear_error():
    unet = _tiny_unet()
    install_uniid_processors(unet, _Model(_cross_widths(unet)))
    sample, context = _inputs()
    with torch.no_grad(), pytest.raises(UniIDError, match="adapter tokens"):
        unet(sample, 10, encoder_hidden_states=context[:, :M])


def test_training_path_sends_gradients_to_the_ip_weights_and_caches_at_inference():
    unet = _tiny_unet().requires_grad_(False)
    model = _Model(_cross_widths(unet))
    install_uniid_processors(unet, model, rescale="add", scale=1.0)
    sample, context = _inputs()
    unet(sample, 10, encoder_hidden_states=context).sample.square().mean().backward()
    grads = [p.grad for p in model.adapter_branch.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)

    caches = {id(p.kv_cache) for p in uniid_processors(unet)}
    assert len(caches) == 1
    cache = uniid_processors(unet)[0].kv_cache
    with torch.no_grad():
        for _ in range(3):
            unet(sample, 10, encoder_hidden_states=context)
    assert cache.projections == len(uniid_processors(unet))


def test_spatial_region_mask_limits_the_identity_to_a_region():
    unet = _tiny_unet()
    sample, context = _inputs()
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor2_0())
        stock = unet(sample, 10, encoder_hidden_states=context[:, :-M]).sample
        install_uniid_processors(unet, _Model(_cross_widths(unet)), scale=1.0)
        full = unet(sample, 10, encoder_hidden_states=context).sample
        for processor in uniid_processors(unet):
            processor.region_mask = torch.zeros(8, 8)
        masked_out = unet(sample, 10, encoder_hidden_states=context).sample
        for processor in uniid_processors(unet):
            processor.region_mask = torch.ones(1, 1, 8, 8)
        all_in = unet(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(masked_out, stock, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(all_in, full, atol=1e-5, rtol=1e-5)


def test_processor_forward_never_syncs_with_the_host(monkeypatch):
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=32, cross_attention_dim=CONTEXT, heads=2, dim_head=16).eval()
    to_k_ip, to_v_ip = nn.Linear(CONTEXT, 32, bias=False), nn.Linear(CONTEXT, 32, bias=False)
    processor = UniIDAttnProcessor(to_k_ip, to_v_ip, M, scale=torch.tensor([0.8, 1.2]), rescale="normalized")
    processor.region_mask = torch.ones(4, 4)
    attn.set_processor(processor)
    hidden = torch.randn(2, 16, 32)
    _, context = _inputs()

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync in the processor")

    with torch.no_grad():
        attn(hidden, encoder_hidden_states=context)
        for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        for _ in range(2):
            attn(hidden, encoder_hidden_states=context)
    assert processor.kv_cache.projections == 1


def test_unet_with_processors_can_be_deep_copied():
    import copy

    unet = _tiny_unet()
    install_uniid_processors(unet, _Model(_cross_widths(unet)))
    sample, context = _inputs()
    with torch.no_grad():
        expected = unet(sample, 10, encoder_hidden_states=context).sample
        twin = copy.deepcopy(unet)
        got = twin(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected)
    caches = {id(p.kv_cache) for p in uniid_processors(twin)}
    assert len(caches) == 1 and caches.isdisjoint({id(p.kv_cache) for p in uniid_processors(unet)})
