"""Wrong, damaged and foreign files give one recognisable, actionable CheckpointError each."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from uniid_core.checkpoint import load_face_net, load_official, load_uniid, save_uniid
from uniid_core.errors import CheckpointError
from uniid_core.models import FaceRecognitionNet, UniIDConfig, UniIDModel


def _w(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape)


def _tiny_state(base: UniIDConfig, **changes) -> dict[str, torch.Tensor]:
    return UniIDModel(UniIDConfig(**{**base.__dict__, **changes})).state_dict()


def _expect(path, match: str, loader=load_uniid):
    with pytest.raises(CheckpointError, match=match) as info:
        loader(path)
    return str(info.value)


def test_ip_adapter_is_recognised(tmp_path):
    nested = tmp_path / "ip-adapter_sdxl.bin"
    torch.save({"image_proj": {"proj.weight": _w(8, 4)}, "ip_adapter": {"1.to_k_ip.weight": _w(8)}}, nested)
    _expect(nested, "IP-Adapter")
    flat = tmp_path / "ip-adapter.safetensors"
    save_file({"image_proj.proj.weight": _w(8, 4), "ip_adapter.1.to_v_ip.weight": _w(8, 4)}, str(flat))
    _expect(flat, "IP-Adapter")


def test_pulid_is_recognised(tmp_path):
    path = tmp_path / "pulid_v1.bin"
    torch.save({"id_adapter": {"body.weight": _w(4)}, "id_adapter_attn_layers": {"1.k.weight": _w(2)}}, path)
    _expect(path, "PuLID")
    flux = tmp_path / "pulid_flux.safetensors"
    save_file({"pulid_encoder.id_embedding.0.weight": _w(4), "pulid_ca.0.to_q.weight": _w(2)}, str(flux))
    _expect(flux, "PuLID")


def test_sd15_width_adapter_is_recognised(tmp_path, tiny_model):
    path = tmp_path / "sd15.bin"
    state = _tiny_state(tiny_model.config, context_dim=768)
    state = {k: v for k, v in state.items() if k.startswith("adapter_branch.")}
    torch.save(state, path)
    _expect(path, "SD1.5")
    single_tower = tmp_path / "sd15_text.bin"
    single = {"text_branch.norm_1.weight": _w(768), "text_branch.proj_1.proj.2.weight": _w(2304, 8)}
    torch.save(single, single_tower)
    _expect(single_tower, "SD1.5")


def test_damaged_files(tmp_path, tiny_model):
    good = save_uniid(tiny_model, tmp_path / "good.safetensors")
    data = good.read_bytes()
    for name, blob in (("cut_body.safetensors", data[: len(data) // 2]), ("cut_head.safetensors", data[:40])):
        (tmp_path / name).write_bytes(blob)
        _expect(tmp_path / name, "truncated")
    torch.save(tiny_model.state_dict(), tmp_path / "good.bin")
    blob = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(blob[: len(blob) // 2])
    _expect(tmp_path / "cut.bin", "truncated")
    (tmp_path / "notes.bin").write_bytes(b"this is a text file, not weights\n" * 10)
    _expect(tmp_path / "notes.bin", "not a weights file")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect(tmp_path / "empty.safetensors", "empty")
    _expect(tmp_path / "missing.safetensors", "no such file")
    (tmp_path / "glintr100.onnx").write_bytes(b"\x08\x07onnx")
    _expect(tmp_path / "glintr100.onnx", "ONNX", load_face_net)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_args.bin"
    torch.save({"args": argparse.Namespace(lr=1e-4), "text_branch.norm_1.weight": _w(4)}, path)
    _expect(path, "weights-only")


def test_face_net_and_uniid_swapped(tmp_path, tiny_model, tiny_face_net):
    face = tmp_path / "backbone.pth"
    torch.save(tiny_face_net.state_dict(), face)
    _expect(face, "face-recognition backbone")
    uniid = save_uniid(tiny_model, tmp_path / "uniid.safetensors")
    _expect(uniid, "UniID checkpoint", load_face_net)
    message = _expect(face, "IResNet-100", load_face_net)
    assert "[1, 1, 1, 1]" in message
    garbage = tmp_path / "other.safetensors"
    save_file({"encoder.weight": _w(2)}, str(garbage))
    _expect(garbage, "not an insightface IResNet", load_face_net)
    _expect(garbage, "holds no UniID tensors")


def test_face_net_missing_and_misshapen(tmp_path):
    with torch.device("meta"):
        keys = FaceRecognitionNet().state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in keys.items()}
    del state["layer3.5.bn2.running_var"]
    state["fc.weight"] = _w(512, 100)
    message = _expect(_save(tmp_path / "r100.pth", state), "does not fit IResNet-100", load_face_net)
    assert "1 missing (layer3.5.bn2.running_var)" in message
    assert "fc.weight: file (512, 100) vs model (512, 25088)" in message


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    for key in [k for k in state if ".layers.1." in k and k.startswith("adapter_branch.")][:5]:
        del state[key]
    state["text_branch.norm_1.bias"] = _w(65)
    state["text_branch.extra.weight"] = _w(3)
    message = _expect(_save(tmp_path / "bad.bin", state), "does not fit a UniID model")
    assert "5 missing" in message and "1 unexpected (text_branch.extra.weight)" in message
    assert "text_branch.norm_1.bias: file (65,) vs model (64,)" in message


def test_incomplete_branch_names_the_key(tmp_path, tiny_model):
    state = {k: v for k, v in tiny_model.state_dict().items() if k != "adapter_branch.latents"}
    _expect(_save(tmp_path / "no_latents.bin", state), "adapter_branch.latents is missing")


def test_folder_errors(tmp_path, tiny_model):
    _expect(tmp_path, "no UniID weights found")
    save_uniid(tiny_model, tmp_path / "a.safetensors")
    save_uniid(tiny_model, tmp_path / "b.safetensors")
    _expect(tmp_path, "holds 2 text branches.*a.safetensors, b.safetensors")
    with pytest.raises(CheckpointError, match="no pytorch_model.bin"):
        load_official(text=tmp_path)
    with pytest.raises(CheckpointError, match="give the text-branch checkpoint"):
        load_official()


def test_metadata_checks(tmp_path, tiny_model, monkeypatch):
    from uniid_core import checkpoint

    newer = {"format": "uniid", "format_version": "2"}
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 2)
    path = save_uniid(tiny_model, tmp_path / "future.safetensors")
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    assert newer.items() <= _meta(path).items()
    _expect(path, "newer")
    edited = tmp_path / "edited.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(tensors, str(edited), metadata={**_meta(path), "format_version": "1", "num_text_tokens": "5"})
    _expect(edited, "metadata says num_text_tokens=5")
    save_file(tensors, str(edited), metadata={**_meta(path), "layer_widths": "[32, 64]"})
    assert _expect(edited, "damaged UniID metadata").startswith(f"{edited}: ")


def _meta(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _save(path, state):
    torch.save(state, path)
    return path
