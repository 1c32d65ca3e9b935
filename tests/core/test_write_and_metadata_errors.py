"""Writes honour the umask and fail cleanly naming the output; damaged files are named in every error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from uniid_core import checkpoint, convert
from uniid_core.checkpoint import load_uniid, save_uniid
from uniid_core.errors import CheckpointError
from uniid_core.identity import Identity, load_identity, save_identity
from uniid_core.weights_file import atomic_write


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask_like_a_plain_write(tmp_path: Path, tiny_model, umask, mask) -> None:
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    weights = save_uniid(tiny_model, tmp_path / "weights.safetensors")
    identity = save_identity(Identity(adapter_tokens=torch.zeros(1, 2, 8)), tmp_path / "me.safetensors")
    expected = plain.stat().st_mode & 0o777
    assert expected == 0o666 & ~mask
    assert weights.stat().st_mode & 0o777 == expected
    assert identity.stat().st_mode & 0o777 == expected


def _disk_full(tensors, path, metadata=None) -> None:
    """save_file as it fails on a full disk: part of the file is written, then the writer errors."""
    Path(path).write_bytes(b"\0" * 100)
    raise SafetensorError(f"Error while serializing: I/O error writing {path}: No space left on device")


def test_write_errors_name_the_output_and_leave_nothing(tmp_path: Path, tiny_model, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "save_file", _disk_full)
    out = tmp_path / "out" / "uniid.safetensors"
    with pytest.raises(CheckpointError) as info:
        save_uniid(tiny_model, out)
    text = str(info.value)
    assert text.startswith(f"could not write {out}: ") and "No space left on device" in text
    assert ".tmp" not in text
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_write_reports_os_errors_for_the_target(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=f"could not write {blocker / 'x.safetensors'}: "):
        atomic_write(blocker / "x.safetensors", lambda tmp: None)

    def fails(tmp: str) -> None:
        raise OSError(28, "No space left on device", tmp)

    with pytest.raises(CheckpointError) as info:
        atomic_write(tmp_path / "y.bin", fails)
    assert str(info.value) == (
        f"could not write {tmp_path / 'y.bin'}: No space left on device; check the folder's free space and "
        "permissions"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_convert_on_a_full_disk_prints_one_error(tmp_path, tiny_model, monkeypatch, capsys) -> None:
    branch = tmp_path / "adapter_ckpt"
    branch.mkdir()
    state = tiny_model.state_dict()
    adapter = {k: v.contiguous() for k, v in state.items() if k.startswith("adapter_branch.")}
    torch.save(adapter, branch / "pytorch_model.bin")
    monkeypatch.setattr(checkpoint, "save_file", _disk_full)
    out = tmp_path / "models" / "uniid.safetensors"
    assert convert.main(["--adapter", str(branch), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not write {out}: ") and "No space left" in err
    assert "\n" not in err and not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "field,value",
    [("format_version", "1.0"), ("num_references", "two"), ("format_version", ""), ("num_identities", "x")],
)
def test_identity_with_damaged_metadata_names_file_and_field(tmp_path: Path, field: str, value: str) -> None:
    path = save_identity(Identity(adapter_tokens=torch.zeros(1, 2, 8)), tmp_path / "me.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    save_file({"adapter_tokens": torch.zeros(1, 2, 8)}, str(path), metadata={**metadata, field: value})
    with pytest.raises(CheckpointError) as info:
        load_identity(path)
    assert str(info.value).startswith(f"{path}: damaged identity metadata ({field}={value!r}")


def test_a_folder_given_as_the_face_net_is_called_a_folder(tmp_path: Path) -> None:
    from uniid_core.checkpoint import load_face_net

    with pytest.raises(CheckpointError, match=f"{tmp_path} is a folder, not a weights file"):
        load_face_net(tmp_path)


def test_shape_problems_name_the_file(tmp_path: Path, tiny_model) -> None:
    state = {k: v for k, v in tiny_model.state_dict().items() if k != "adapter_branch.latents"}
    path = tmp_path / "no_latents.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_uniid(path)
    assert str(info.value).startswith(f"{path}: the adapter-branch weights are incomplete")
    sd15 = tmp_path / "sd15_text.bin"
    torch.save({"text_branch.norm_1.weight": torch.zeros(768),
                "text_branch.proj_1.proj.2.weight": torch.zeros(2304, 8)}, sd15)
    with pytest.raises(CheckpointError) as info:
        load_uniid(sd15)
    assert str(info.value).startswith(f"{sd15}: this text branch has a single 768-wide tower (SD1.5)")
