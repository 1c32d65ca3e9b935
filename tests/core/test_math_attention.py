"""Decoupled attention math: rescalers (per-row norms, epsilon rule), registry, scales, masks, KV cache."""

from __future__ import annotations

import pytest
import torch

from uniid_core.attention import (
    IPKVCache,
    attention,
    decoupled_attention,
    get_rescaler,
    normalized_rescale,
    region_mask_for_tokens,
    register_rescaler,
    rescaler_names,
    unregister_rescaler,
)
from uniid_core.errors import UniIDError

HEADS = 4


def _reference_attention(q, k, v, heads):
    b, lq, c = q.shape
    d = c // heads
    qh = q.view(b, lq, heads, d).transpose(1, 2).double()
    kh = k.view(b, -1, heads, d).transpose(1, 2).double()
    vh = v.view(b, -1, heads, d).transpose(1, 2).double()
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    return (weights @ vh).transpose(1, 2).reshape(b, lq, c)


def _reference_normalized(text, ip, scale):
    norm_txt = text.double().flatten(1).norm(dim=1)
    norm_ip = ip.double().flatten(1).norm(dim=1)
    if bool((norm_ip < 1e-6).any()):
        norm_ip = norm_ip + 1e-6
    return text.double() + scale * (norm_txt / norm_ip)[:, None, None] * ip.double()


@pytest.fixture()
def qkv():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 16, 32, generator=gen)
    k = torch.randn(3, 7, 32, generator=gen)
    v = torch.randn(3, 7, 32, generator=gen)
    k_ip = torch.randn(3, 5, 32, generator=gen) * 2
    v_ip = torch.randn(3, 5, 32, generator=gen) * torch.tensor([0.5, 3.0, 10.0])[:, None, None]
    return q, k, v, k_ip, v_ip


def test_attention_matches_softmax_reference(qkv):
    q, k, v, _, _ = qkv
    got = attention(q, k, v, HEADS).double()
    torch.testing.assert_close(got, _reference_attention(q, k, v, HEADS), atol=1e-5, rtol=1e-5)


def test_normalized_uses_per_row_frobenius_norms(qkv):
    q, k, v, k_ip, v_ip = qkv
    out = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, 0.8, "normalized")
    text = _reference_attention(q, k, v, HEADS)
    ip = _reference_attention(q, k_ip, v_ip, HEADS)
    torch.testing.assert_close(out.double(), _reference_normalized(text, ip, 0.8), atol=1e-5, rtol=1e-5)
    whole_batch = text + 0.8 * (text.norm() / ip.norm()) * ip
    assert (out.double() - whole_batch).abs().max() > 1e-2


def test_add_is_plain_sum(qkv):
    q, k, v, k_ip, v_ip = qkv
    out = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, 1.2, "add")
    expected = _reference_attention(q, k, v, HEADS) + 1.2 * _reference_attention(q, k_ip, v_ip, HEADS)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_epsilon_rule_applies_to_all_rows_when_any_row_is_tiny():
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(2, 4, 8, generator=gen)
    ip = torch.randn(2, 4, 8, generator=gen) * 1e-3
    ip_tiny = ip.clone()
    ip_tiny[0] = 0.0
    out = normalized_rescale(text, ip_tiny, 1.0)
    norm_txt = text[1].double().norm()
    expected_row1 = text[1].double() + norm_txt / (ip[1].double().norm() + 1e-6) * ip[1].double()
    torch.testing.assert_close(out[1].double(), expected_row1, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[0], text[0])
    plain = normalized_rescale(text, ip, 1.0)
    expected_plain = text[1].double() + norm_txt / ip[1].double().norm() * ip[1].double()
    torch.testing.assert_close(plain[1].double(), expected_plain, atol=1e-6, rtol=1e-6)
    assert (out[1] - plain[1]).abs().max() > 0


def test_per_row_scale_tensor(qkv):
    q, k, v, k_ip, v_ip = qkv
    scales = torch.tensor([0.0, 1.0, 2.5])
    out = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, scales, "normalized")
    for row, scale in enumerate(scales.tolist()):
        single = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, scale, "normalized")
        torch.testing.assert_close(out[row], single[row], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], attention(q, k, v, HEADS)[0], atol=1e-6, rtol=1e-6)


def test_region_mask_multiplies_the_adapter_term(qkv):
    q, k, v, k_ip, v_ip = qkv
    plain = attention(q, k, v, HEADS)
    full = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, 1.0, "normalized")
    mask = torch.zeros(3, 16, 1)
    mask[:, :8] = 1.0
    out = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, 1.0, "normalized", region_mask=mask)
    torch.testing.assert_close(out[:, :8], full[:, :8], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[:, 8:], plain[:, 8:], atol=1e-6, rtol=1e-6)


def test_custom_rescaler_registered_by_name_and_used(qkv):
    q, k, v, k_ip, v_ip = qkv
    seen = []

    def text_only(text_out, ip_out, scale, layer):
        seen.append((tuple(text_out.shape), layer, scale))
        return text_out

    register_rescaler("test_text_only", text_only)
    try:
        assert get_rescaler("test_text_only") is text_only and "test_text_only" in rescaler_names()
        out = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, 0.7, "test_text_only", layer="down.0")
        torch.testing.assert_close(out, attention(q, k, v, HEADS))
        assert seen == [((3, 16, 32), "down.0", 0.7)]
    finally:
        unregister_rescaler("test_text_only")
    assert "test_text_only" not in rescaler_names()
    with pytest.raises(UniIDError):
        get_rescaler("test_text_only")
    with pytest.raises(UniIDError, match="built-in"):
        unregister_rescaler("normalized")


def test_custom_layout_path_equals_fast_layout_path(qkv):
    q, k, v, k_ip, v_ip = qkv
    register_rescaler("test_normalized_copy", normalized_rescale)
    try:
        slow = decoupled_attention(
            q, k, v, k_ip, v_ip, HEADS, torch.tensor([0.5, 1.0, 2.0]), "test_normalized_copy"
        )
        fast = decoupled_attention(q, k, v, k_ip, v_ip, HEADS, torch.tensor([0.5, 1.0, 2.0]), "normalized")
        torch.testing.assert_close(slow, fast, atol=1e-6, rtol=1e-6)
    finally:
        unregister_rescaler("test_normalized_copy")


def test_unknown_rescaler_is_a_clear_error(qkv):
    q, k, v, k_ip, v_ip = qkv
    with pytest.raises(UniIDError, match="unknown adapter rescaler 'nope'"):
        decoupled_attention(q, k, v, k_ip, v_ip, HEADS, 1.0, "nope")


def test_no_host_sync_in_the_per_layer_path(qkv, monkeypatch):
    q, k, v, _, _ = qkv
    tokens = torch.randn(3, 5, 24)
    weight_k, weight_v = torch.randn(32, 24), torch.randn(32, 24)
    cache = IPKVCache()

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync in the per-layer path")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(2):
        k_ip, v_ip = cache.kv("layer", tokens, weight_k, weight_v)
        for rescale in ("normalized", "add"):
            for scale in (1.0, torch.tensor([0.8, 1.2, 1.0])):
                decoupled_attention(
                    q, k, v, k_ip, v_ip, HEADS, scale, rescale, region_mask=torch.ones(3, 16, 1)
                )
    tiny = torch.zeros_like(v)
    decoupled_attention(q, k, v, k_ip, tiny[:, :5], HEADS, 1.0, "normalized")


def test_kv_cache_projects_once_and_tracks_changes(monkeypatch):
    tokens = torch.randn(2, 5, 24)
    weight_k = torch.nn.Parameter(torch.randn(32, 24))
    weight_v = torch.nn.Parameter(torch.randn(32, 24))
    cache = IPKVCache()
    calls = []
    original = torch.matmul

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "matmul", counting)
    first = cache.kv("a", tokens, weight_k, weight_v)
    for _ in range(5):
        again = cache.kv("a", tokens, weight_k, weight_v)
        assert again[0] is first[0] and again[1] is first[1]
    assert len(calls) == 1 and cache.projections == 1
    torch.testing.assert_close(first[0], tokens @ weight_k.detach().t())
    torch.testing.assert_close(first[1], tokens @ weight_v.detach().t())

    cache.kv("b", tokens, weight_k, weight_v)
    assert cache.projections == 2
    cache.kv("a", tokens, weight_k, weight_v, dtype=torch.float64)
    assert cache.projections == 3
    new_tokens = tokens.clone()
    cache.kv("a", new_tokens, weight_k, weight_v)
    assert cache.projections == 4
    with torch.no_grad():
        weight_k.mul_(2.0)
    updated = cache.kv("a", new_tokens, weight_k, weight_v)
    assert cache.projections == 5
    torch.testing.assert_close(updated[0], new_tokens @ weight_k.detach().t())
    new_tokens.add_(1.0)
    cache.kv("a", new_tokens, weight_k, weight_v)
    assert cache.projections == 6
    assert len(cache) == 3
    cache.clear()
    assert len(cache) == 0


def test_kv_cache_does_not_track_gradients():
    tokens = torch.randn(1, 5, 24)
    weight_k = torch.nn.Parameter(torch.randn(32, 24))
    weight_v = torch.nn.Parameter(torch.randn(32, 24))
    k_ip, v_ip = IPKVCache().kv(0, tokens, weight_k, weight_v)
    assert not k_ip.requires_grad and not v_ip.requires_grad


def test_region_mask_for_tokens_finds_each_layer_grid():
    mask = torch.zeros(1, 1, 16, 12)
    mask[..., :8, :] = 1.0
    same = region_mask_for_tokens(mask, 16 * 12)
    assert same.shape == (1, 192, 1)
    torch.testing.assert_close(same[0, :, 0], mask.flatten())
    half = region_mask_for_tokens(mask[:, 0], 8 * 6)
    assert half.shape == (1, 48, 1)
    torch.testing.assert_close(half[0, :24, 0], torch.ones(24))
    torch.testing.assert_close(half[0, 24:, 0], torch.zeros(24))
    odd = region_mask_for_tokens(torch.ones(5, 3), 3 * 2)
    assert odd.shape == (1, 6, 1)
    with pytest.raises(UniIDError, match="does not match"):
        region_mask_for_tokens(mask, 7)
