"""The converter CLI and the single-file format: bit-identical round trip, dtypes, all-or-nothing writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from uniid_core import checkpoint
from uniid_core.checkpoint import load_uniid, save_uniid
from uniid_core.convert import main
from uniid_core.errors import CheckpointError


def test_convert_round_trip_is_bit_identical(
    official_layout, tmp_path, text_state_dict, adapter_state_dict, golden_uniid, capsys
):
    out = tmp_path / "uniid.safetensors"
    rc = main([
        "--text", str(official_layout / "text_branch_ckpt"),
        "--adapter", str(official_layout / "adapter_ckpt"),
        "--out", str(out),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "N=3" in printed and "M=25" in printed and golden_uniid.fingerprint in printed
    stored = load_file(str(out))
    expected = {**text_state_dict, **adapter_state_dict}
    assert set(stored) == set(expected)
    assert all(torch.equal(stored[k], v) and stored[k].dtype == v.dtype for k, v in expected.items())
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "uniid" and meta["format_version"] == "1" and meta["family"] == "sdxl"
    assert json.loads(meta["num_text_tokens"]) == 3 and json.loads(meta["num_adapter_tokens"]) == 25
    assert json.loads(meta["adapter_hidden_dim"]) == 768 and json.loads(meta["context_dim"]) == 2048
    assert json.loads(meta["text_widths"]) == [768, 1280]
    assert [int(i) for i in json.loads(meta["layer_widths"])] == list(range(1, 35, 2))
    reloaded = load_uniid(out)
    assert reloaded.fingerprint == golden_uniid.fingerprint and reloaded.config == golden_uniid.config
    assert main(["--adapter", str(official_layout / "adapter_ckpt"), "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_single_file_dtypes(tiny_model, tmp_path, dtype):
    path = save_uniid(tiny_model, tmp_path / "tiny.safetensors", dtype=dtype)
    stored = load_uniid(path)
    assert stored.dtype == dtype and stored.fingerprint == tiny_model.fingerprint
    assert stored.config == tiny_model.config
    widened = load_uniid(path, dtype=torch.float32)
    assert widened.dtype == torch.float32
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(widened.state_dict()[key], value.to(dtype).float()), key


def test_convert_failure_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "ip-adapter.bin"
    weight = torch.zeros(4, 4)
    torch.save({"image_proj": {"proj.weight": weight}, "ip_adapter": {"1.to_k_ip.weight": weight}}, bad)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["--adapter", str(bad), "--out", str(out_dir / "x.safetensors")]) == 1
    assert "IP-Adapter" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


def test_failed_save_leaves_no_debris_and_keeps_old_file(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "keep.safetensors"
    save_uniid(tiny_model, target)
    before = target.read_bytes()

    def broken_writer(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_writer)
    with pytest.raises(CheckpointError, match=f"could not write {target}: disk full"):
        save_uniid(tiny_model, target)
    with pytest.raises(CheckpointError, match="new.safetensors: disk full"):
        save_uniid(tiny_model, tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]
    assert target.read_bytes() == before


def test_save_requires_safetensors_suffix(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match=".safetensors"):
        save_uniid(tiny_model, tmp_path / "model.bin")


def test_cli_entry_point_runs():
    repo = Path(checkpoint.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "uniid_core.convert", "--help"],
        capture_output=True, text=True, timeout=120, cwd=repo,
    )
    assert result.returncode == 0 and "--adapter" in result.stdout and "--dtype" in result.stdout


def test_bare_branch_keys_and_nested_prefixes_load(tiny_model, tmp_path):
    state = tiny_model.state_dict()
    text = {k.removeprefix("text_branch."): v for k, v in state.items() if k.startswith("text_branch.")}
    bare = {f"module._orig_mod.{k}": v for k, v in text.items()}
    torch.save(bare, tmp_path / "text.bin")
    model = load_uniid(tmp_path / "text.bin")
    assert model.adapter_branch is None and model.config.num_text_tokens == 2
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_legacy_torch_format_and_misleading_suffix(tiny_model, tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save(tiny_model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert load_uniid(legacy).fingerprint == tiny_model.fingerprint
    renamed = tmp_path / "really_safetensors.bin"
    renamed.write_bytes(save_uniid(tiny_model, tmp_path / "x.safetensors").read_bytes())
    assert load_uniid(renamed).config == tiny_model.config


@pytest.mark.parametrize("branch", ["text", "adapter"])
def test_single_branch_file_with_non_default_sizes_loads(branch, tmp_path):
    """Metadata of the absent branch (e.g. text widths in an adapter-only file) is not held against it."""
    from dataclasses import replace

    from tests.core.conftest import TINY_CONFIG, randomize
    from uniid_core.models.uniid import UniIDModel

    if branch == "text":
        config = replace(TINY_CONFIG, num_adapter_tokens=None, adapter_hidden_dim=None)
    else:
        config = replace(TINY_CONFIG, num_text_tokens=None)
    model = randomize(UniIDModel(config), seed=2)
    model.refresh_fingerprint()
    loaded = load_uniid(save_uniid(model, tmp_path / f"{branch}.safetensors"))
    assert (loaded.text_branch is None) == (branch == "adapter")
    assert (loaded.adapter_branch is None) == (branch == "text")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
