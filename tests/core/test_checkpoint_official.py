"""Loading the official on-disk layout (rule-made golden weights written as the release stores them)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from uniid_core.checkpoint import load_face_net, load_official, load_uniid
from uniid_core.errors import CheckpointError


def _assert_same_weights(model, *sources):
    state = model.state_dict()
    expected = {k: v for source in sources for k, v in source.items()}
    assert list(state) == list(expected) or set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_parent_folder_loads_both_branches(
    official_layout, text_state_dict, adapter_state_dict, golden_uniid
):
    model = load_uniid(official_layout)
    _assert_same_weights(model, text_state_dict, adapter_state_dict)
    assert model.config == golden_uniid.config
    assert model.fingerprint == golden_uniid.fingerprint  # prefixes and file layout do not change it
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_branch_folder_and_bin_load_one_branch(official_layout, text_state_dict, adapter_state_dict):
    text_only = load_uniid(official_layout / "text_branch_ckpt")
    assert text_only.adapter_branch is None and text_only.config.num_adapter_tokens is None
    _assert_same_weights(text_only, text_state_dict)
    adapter_only = load_uniid(official_layout / "adapter_ckpt" / "pytorch_model.bin")
    assert adapter_only.text_branch is None and adapter_only.config.num_text_tokens is None
    _assert_same_weights(adapter_only, adapter_state_dict)
    assert len({text_only.fingerprint, adapter_only.fingerprint}) == 2


def test_load_official_with_two_paths(
    official_layout, text_state_dict, adapter_state_dict, golden_uniid, golden_features
):
    adapter_bin = official_layout / "adapter_ckpt" / "pytorch_model.bin"
    model = load_official(text=official_layout / "text_branch_ckpt", adapter=adapter_bin)
    _assert_same_weights(model, text_state_dict, adapter_state_dict)
    with torch.no_grad():
        assert torch.equal(model.text_branch(golden_features), golden_uniid.text_branch(golden_features))
    with pytest.raises(CheckpointError, match="swap"):
        load_official(text=official_layout / "adapter_ckpt", adapter=official_layout / "text_branch_ckpt")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loading(official_layout, adapter_state_dict, golden_uniid, dtype):
    model = load_uniid(official_layout / "adapter_ckpt", dtype=dtype)
    assert model.dtype == dtype
    key = "adapter_branch.latents"
    assert torch.equal(model.state_dict()[key], adapter_state_dict[key].to(dtype))
    reference = load_uniid(official_layout / "adapter_ckpt")
    assert model.fingerprint == reference.fingerprint  # identities stay valid across dtype casts
    tokens = model.negative_adapter_tokens()
    assert tokens.dtype == dtype
    assert torch.allclose(tokens.float(), golden_uniid.negative_adapter_tokens(), atol=0.1)


def test_face_net_from_pth_and_safetensors(tmp_path, face_state_dict):
    pth = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in face_state_dict.items()}, pth)
    st = tmp_path / "backbone.safetensors"
    save_file(dict(face_state_dict), str(st))
    for path in (pth, st):
        net = load_face_net(path)
        state = net.state_dict()
        assert all(torch.equal(state[k], v) for k, v in face_state_dict.items())
        assert not net.training and not any(p.requires_grad for p in net.parameters())
    half = load_face_net(st, dtype=torch.bfloat16)
    assert half.fc.weight.dtype == torch.bfloat16
    assert half.bn1.num_batches_tracked.dtype == torch.int64
