"""Release folders of any shape load by their keys: flat, nested, safetensors, training state, face net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uniid_core.checkpoint import load_face_net, load_uniid
from uniid_core.errors import CheckpointError
from uniid_core.release import (
    KIND_ADAPTER,
    KIND_FACE_NET,
    KIND_TEXT,
    KIND_UNREADABLE,
    classify_file,
    holds_uniid,
    is_weights_name,
    scan_release,
)


def _branch(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def _bin(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return path


def _safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _config(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps({"num_text_branch_tokens": 2, "num_adapter_tokens": 4}))


def _assert_loads_both(folder: Path, model) -> None:
    loaded = load_uniid(folder)
    state = loaded.state_dict()
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert loaded.fingerprint == model.fingerprint


def test_flat_official_layout_with_face_net(tmp_path: Path, tiny_model, tiny_face_net):
    text = {f"module.{k}": v for k, v in _branch(tiny_model, "text_branch.").items()}
    _bin(tmp_path / "text_branch_ckpt" / "pytorch_model.bin", text)
    _bin(tmp_path / "adapter_ckpt" / "pytorch_model.bin", _branch(tiny_model, "adapter_branch."))
    _config(tmp_path / "text_branch_ckpt")
    _config(tmp_path / "adapter_ckpt")
    face = _bin(tmp_path / "backbone.pth", tiny_face_net.state_dict())
    _assert_loads_both(tmp_path, tiny_model)
    contents = scan_release(tmp_path)
    assert contents.of(KIND_FACE_NET) == [face]
    assert contents.of(KIND_TEXT) == [tmp_path / "text_branch_ckpt" / "pytorch_model.bin"]
    assert holds_uniid(tmp_path)


def test_nested_checkpoints_skip_training_state_and_deeper_files(tmp_path: Path, tiny_model, tiny_face_net):
    text, adapter = _branch(tiny_model, "text_branch."), _branch(tiny_model, "adapter_branch.")
    run = tmp_path / "text_branch" / "checkpoint-12"
    _bin(run / "pytorch_model.bin", text)
    _config(run)
    # Training state next to the weights: never opened (these hold UniID keys, so reading them as
    # weights would make the text branch ambiguous and the load fail).
    for name in ("optimizer.bin", "scheduler.bin", "scaler.pt", "random_states_0.pkl"):
        _bin(run / name, text)
    _safetensors(tmp_path / "adapter_branch" / "checkpoint-16" / "model.safetensors", adapter)
    _bin(tmp_path / "face_recognition" / "glint360k_r100" / "backbone.pth", tiny_face_net.state_dict())
    _bin(tmp_path / "a" / "b" / "c" / "d" / "pytorch_model.bin", text)  # four levels down: not searched
    _assert_loads_both(tmp_path, tiny_model)
    contents = scan_release(tmp_path)
    faces = contents.of(KIND_FACE_NET)
    assert faces == [tmp_path / "face_recognition" / "glint360k_r100" / "backbone.pth"]
    assert sum(len(paths) for paths in contents.found.values()) == 3


def test_bare_keys_in_safetensors_and_both_formats_side_by_side(tmp_path: Path, tiny_model):
    text = _branch(tiny_model, "text_branch.")
    prefixed = _branch(tiny_model, "adapter_branch.")
    adapter = {k.removeprefix("adapter_branch."): v for k, v in prefixed.items()}
    _bin(tmp_path / "text" / "pytorch_model.bin", text)
    _safetensors(tmp_path / "text" / "model.safetensors", text)
    _safetensors(tmp_path / "adapter" / "model.safetensors", adapter)
    assert classify_file(tmp_path / "adapter" / "model.safetensors") == KIND_ADAPTER
    _assert_loads_both(tmp_path, tiny_model)


def test_single_file_release_and_single_branch_pick(tmp_path: Path, tiny_model):
    from uniid_core.checkpoint import save_uniid

    save_uniid(tiny_model, tmp_path / "release" / "uniid_sdxl.safetensors")
    _assert_loads_both(tmp_path / "release", tiny_model)
    only = _bin(tmp_path / "official" / "adapter_ckpt" / "pytorch_model.bin", _branch(tiny_model, "adapter_"))
    picked = load_uniid(only)
    assert picked.text_branch is None and picked.adapter_branch is not None


def test_two_text_branches_are_an_error_listing_them(tmp_path: Path, tiny_model):
    text = _branch(tiny_model, "text_branch.")
    _bin(tmp_path / "text_branch" / "checkpoint-6" / "pytorch_model.bin", text)
    _bin(tmp_path / "text_branch" / "checkpoint-12" / "pytorch_model.bin", text)
    _bin(tmp_path / "adapter_ckpt" / "pytorch_model.bin", _branch(tiny_model, "adapter_branch."))
    with pytest.raises(CheckpointError, match="2 text branches") as info:
        load_uniid(tmp_path)
    message = str(info.value)
    for part in ("checkpoint-6/pytorch_model.bin", "checkpoint-12/pytorch_model.bin", "adapter_ckpt"):
        assert part in message.replace("\\", "/")
    picked = load_uniid(tmp_path / "text_branch" / "checkpoint-12")
    assert picked.adapter_branch is None


class _NotWeights:
    """A Python object: pickles holding it are refused by weights-only loading."""


def test_pickles_with_objects_are_never_loaded(tmp_path: Path, tiny_face_net):
    torch.save({"text_branch.norm_1.weight": _NotWeights()}, tmp_path / "extra.pt")
    _bin(tmp_path / "face" / "backbone.pth", tiny_face_net.state_dict())
    assert classify_file(tmp_path / "extra.pt") == KIND_UNREADABLE
    with pytest.raises(CheckpointError, match="no UniID weights found") as info:
        load_uniid(tmp_path)
    assert "face net: face/backbone.pth" in str(info.value).replace("\\", "/")
    assert "unreadable: extra.pt" in str(info.value)


def test_face_net_inside_a_release_loads(tmp_path: Path, face_state_dict):
    path = _safetensors(tmp_path / "release" / "face_model" / "model.safetensors", face_state_dict)
    assert classify_file(path) == KIND_FACE_NET
    net = load_face_net(path)
    assert torch.equal(net.fc.weight, face_state_dict["fc.weight"])


@pytest.mark.parametrize(
    "name, weights",
    [
        ("pytorch_model.bin", True),
        ("model.safetensors", True),
        ("pytorch_model_1.bin", True),
        ("backbone.pth", True),
        ("optimizer.bin", False),
        ("optimizer_1.bin", False),
        ("scheduler.bin", False),
        ("scaler.pt", False),
        ("random_states_0.pkl", False),
        ("config.json", False),
    ],
)
def test_weights_names(name: str, weights: bool):
    assert is_weights_name(name) is weights
