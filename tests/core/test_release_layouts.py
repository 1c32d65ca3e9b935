"""Release folders of any shape load by their keys: flat, nested, safetensors, training state, face net."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uniid_core.checkpoint import load_face_net, load_official, load_uniid
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
    message = str(info.value).replace("\\", "/")
    for part in ("checkpoint-6/pytorch_model.bin", "checkpoint-12/pytorch_model.bin", "adapter_ckpt"):
        assert part in message
    kept, moved = "text_branch/checkpoint-12/pytorch_model.bin", "text_branch/checkpoint-6"
    advice = f"to use {kept}, move {moved} out of {tmp_path}".replace("\\", "/")
    assert advice in message, "the advice names what to move, the higher step kept"
    picked = load_uniid(tmp_path / "text_branch" / "checkpoint-12")
    assert picked.adapter_branch is None
    (tmp_path / "text_branch" / "checkpoint-6").rename(tmp_path.parent / f"{tmp_path.name}-checkpoint-6")
    _assert_loads_both(tmp_path, tiny_model)  # following the advice works


def test_unreadable_branch_file_is_named_not_skipped(tmp_path: Path, tiny_model):
    """A truncated adapter file must not leave a release that silently loads the text branch alone."""
    _bin(tmp_path / "text_branch_ckpt" / "pytorch_model.bin", _branch(tiny_model, "text_branch."))
    adapter = _bin(tmp_path / "adapter_ckpt" / "pytorch_model.bin", _branch(tiny_model, "adapter_branch."))
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="the adapter branch is not there") as info:
        load_uniid(tmp_path)
    assert f"{adapter}: cannot read its tensor names" in str(info.value)
    assert "truncated or damaged" in str(info.value) and "Download or copy it again" in str(info.value)
    adapter.unlink()
    adapter.symlink_to(tmp_path / "gone.bin")
    with pytest.raises(CheckpointError, match="a broken link"):
        load_uniid(tmp_path)


def test_a_folder_with_one_branch_says_so(tmp_path: Path, tiny_model, caplog):
    _bin(tmp_path / "text_branch_ckpt" / "pytorch_model.bin", _branch(tiny_model, "text_branch."))
    with caplog.at_level(logging.WARNING, logger="UniID"):
        model = load_uniid(tmp_path)
    assert model.adapter_branch is None
    assert "holds the text branch only (text_branch_ckpt/pytorch_model.bin)" in caplog.text
    assert "the adapter branch is not loaded" in caplog.text


def test_linked_folders_are_followed_once(tmp_path: Path, tiny_model):
    """ComfyUI's listing follows folder links; so does the release search, without loops or duplicates."""
    release, elsewhere = tmp_path / "UniID", tmp_path / "other_disk" / "adapter_ckpt"
    _bin(release / "text_branch" / "checkpoint-12" / "pytorch_model.bin", _branch(tiny_model, "text_branch."))
    _bin(elsewhere / "pytorch_model.bin", _branch(tiny_model, "adapter_branch."))
    try:
        (release / "adapter_ckpt").symlink_to(elsewhere, target_is_directory=True)
    except OSError as exc:
        pytest.skip(f"needs folder links (os.symlink failed: {exc})")
    (release / "text_branch" / "latest").symlink_to(release / "text_branch" / "checkpoint-12")
    (release / "text_branch" / "checkpoint-12" / "loop").symlink_to(release)
    _assert_loads_both(release, tiny_model)
    contents = scan_release(release)
    assert contents.of(KIND_ADAPTER) == [release / "adapter_ckpt" / "pytorch_model.bin"]
    assert len(contents.of(KIND_TEXT)) == 1, "a link to a folder already searched is not searched again"


def _shard(tensors: dict[str, torch.Tensor], folder: Path, name: str, suffix: str, count: int) -> None:
    """Save ``tensors`` in ``count`` shards named as transformers does, with its index file."""
    keys = sorted(tensors)
    weight_map = {}
    for i in range(count):
        shard = f"{name}-{i + 1:05d}-of-{count:05d}{suffix}"
        part = {k: tensors[k] for k in keys[i::count]}
        (_safetensors if suffix == ".safetensors" else _bin)(folder / shard, part)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / f"{name}{suffix}.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_branches_load_as_one_checkpoint(tmp_path: Path, tiny_model):
    text = {f"module.{k}": v for k, v in _branch(tiny_model, "text_branch.").items()}
    _shard(text, tmp_path / "text_branch_ckpt", "pytorch_model", ".bin", 2)
    _shard(_branch(tiny_model, "adapter_branch."), tmp_path / "adapter_ckpt", "model", ".safetensors", 3)
    _assert_loads_both(tmp_path, tiny_model)
    listing = scan_release(tmp_path).listing()
    assert "text branch: text_branch_ckpt/pytorch_model-00001-of-00002.bin and its 1 other shard" in listing
    second = tmp_path / "adapter_ckpt" / "model-00002-of-00003.safetensors"
    assert load_uniid(second).adapter_branch is not None, "any shard loads its whole checkpoint"
    official = load_official(tmp_path / "text_branch_ckpt", tmp_path / "adapter_ckpt")
    assert official.fingerprint == tiny_model.fingerprint
    second.unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors is missing beside it"):
        load_uniid(tmp_path / "adapter_ckpt" / "model-00001-of-00003.safetensors")
    with pytest.raises(CheckpointError, match="the adapter branch is not there") as info:
        load_uniid(tmp_path)
    assert "model-00002-of-00003.safetensors is missing beside it" in str(info.value)


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
        ("sampler.bin", False),
        ("sampler_1.bin", False),
        ("dl_state_dict.bin", False),
        ("config.json", False),
    ],
)
def test_weights_names(name: str, weights: bool):
    assert is_weights_name(name) is weights
