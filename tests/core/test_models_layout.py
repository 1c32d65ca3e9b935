"""Module layouts: official key names/shapes (from the golden specs) and shapes of tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from uniid_core.family import SDXL
from uniid_core.models import (
    AdapterBranch,
    FaceFeatures,
    FeedForward,
    PerceiverAttention,
    TextBranch,
    UniIDConfig,
    UniIDModel,
    iresnet100,
)


def _spec_shapes(golden_dir, name: str, strip: str = "") -> dict[str, tuple[int, ...]]:
    spec = json.loads((golden_dir / "specs" / f"{name}.json").read_text())
    return {e["key"].removeprefix(strip): tuple(e["shape"]) for e in spec["tensors"]}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_face_net_layout_is_insightface(golden_dir):
    with torch.device("meta"):
        net = iresnet100()
    expected = _spec_shapes(golden_dir, "face_recog_r100")
    assert list(_shapes(net).items()) == list(expected.items())  # same keys, shapes and order
    assert not net.features.weight.requires_grad


def test_text_branch_layout_is_official(golden_dir):
    with torch.device("meta"):
        branch = TextBranch(3)
    assert _shapes(branch) == _spec_shapes(golden_dir, "text_branch", "text_branch.")


def test_adapter_branch_layout_is_official(golden_dir):
    expected = _spec_shapes(golden_dir, "adapter_branch", "adapter_branch.")
    widths = {int(k.split(".")[1]): s[0] for k, s in expected.items() if k.endswith("to_k_ip.weight")}
    with torch.device("meta"):
        branch = AdapterBranch(25, 768, widths)
    assert _shapes(branch) == expected


def test_sdxl_config_has_70_attn2_layers():
    widths = SDXL.layer_widths()
    assert len(widths) == 70 and list(widths) == list(range(1, 141, 2))
    assert {widths[i] for i in (1, 7, 109, 119)} == {640}
    assert {widths[i] for i in (9, 47, 49, 107, 121, 139)} == {1280}
    with torch.device("meta"):
        model = UniIDModel(UniIDConfig.sdxl())
    params = sum(p.numel() for p in model.parameters())
    assert 500e6 < params < 530e6  # 118M text + 59M resampler + 340M to_k_ip/to_v_ip


def test_tiny_model_shapes(tiny_model, tiny_face_net):
    with torch.no_grad():
        features = tiny_face_net(torch.rand(3, 3, 112, 112) * 2 - 1)
        text, adapter = tiny_model(features)
    assert features.embedding.shape == (3, 512)
    assert [tuple(h.shape[1:]) for h in features.hidden_states] == [
        (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)
    ]
    assert text.shape == (3, 2, 192) and adapter.shape == (3, 4, 192)
    assert [k.shape for k, _ in tiny_model.adapter_branch.ip_weights()] == [(32, 192), (64, 192), (32, 192)]


def test_fresh_adapter_starts_as_constant_output():
    branch = AdapterBranch(4, 64, {1: 32}, context_dim=128, depth=1)
    assert not branch.adapter_resampler.proj_out.weight.any()
    with torch.no_grad():
        a = branch(FaceFeatures.zeros(1))
        hidden = tuple(torch.randn_like(h) for h in FaceFeatures.zeros(1).hidden_states)
        b = branch(FaceFeatures(torch.randn(1, 512), hidden))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_perceiver_half_precision_tracks_float32(dtype):
    torch.manual_seed(0)
    attn, ff = PerceiverAttention(128), FeedForward(128)
    assert attn.heads == 2
    assert [type(m).__name__ for m in ff] == ["LayerNorm", "Linear", "GELU", "Linear"]
    x, latents = torch.randn(2, 49, 128) * 30, torch.randn(2, 4, 128) * 30
    with torch.no_grad():
        reference = ff(attn(x, latents) + latents)
        attn.to(dtype), ff.to(dtype)
        half = ff(attn(x.to(dtype), latents.to(dtype)) + latents.to(dtype))
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert (half.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_text_branch_rejects_other_tower_counts():
    with pytest.raises(ValueError, match="two towers"):
        TextBranch(3, widths=(768,))
