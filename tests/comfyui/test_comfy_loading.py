"""Model files as ComfyUI users meet them: damaged, doubled and sharded releases, identity file names."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from safetensors.torch import save_file

from tests.comfyui.conftest import combo_choices, small_uniid_model


@pytest.fixture
def uniid_dirs(comfy, tmp_path, monkeypatch):
    """Two uniid model folders, as with an extra_model_paths.yaml entry before ComfyUI/models/uniid."""
    fp = comfy.folder_paths
    first, second = tmp_path / "extra_uniid", tmp_path / "models_uniid"
    first.mkdir()
    second.mkdir()
    table = dict(fp.folder_names_and_paths)
    table["uniid"] = ([str(first), str(second)], set(table["uniid"][1]))
    monkeypatch.setattr(fp, "folder_names_and_paths", table)
    fp.filename_list_cache.clear()
    yield first, second
    fp.filename_list_cache.clear()


@pytest.fixture(scope="module")
def model():
    return small_uniid_model([64, 64])


def _branch(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith(prefix)}


def _identity(value: float, word: str = "woman"):
    from uniid_core.identity import Identity

    return Identity(adapter_tokens=torch.full((1, 4, 2048), value), class_word=word)


def _node(comfy, name: str):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


def test_identity_names_in_any_script_get_their_own_file(comfy, uniid_dirs):
    from uniid_core.errors import UniIDError

    first, _ = uniid_dirs
    save, load = _node(comfy, "UniIDSaveIdentity"), _node(comfy, "UniIDLoadIdentity")
    people = ["张三", "李四", "Zoë", "Zoé", "José"]
    for i, name in enumerate(people):
        save.execute(_identity(float(i)), name, True)  # overwrite on, as a re-queued graph saves
    assert sorted(p.name for p in (first / "identities").iterdir()) == sorted(
        f"{n}.safetensors" for n in people
    )
    assert {f"identities/{n}.safetensors" for n in people} <= set(combo_choices(load, "identity_file"))
    for i, name in enumerate(people):
        loaded, _ = load.execute(f"identities/{name}.safetensors")
        assert torch.equal(loaded.adapter_tokens, _identity(float(i)).adapter_tokens), name
    decomposed = unicodedata.normalize("NFD", "Zoë")  # what some keyboards and macOS file names give
    assert save.execute(_identity(9.0), decomposed, False)[0] == str(
        first / "identities" / "Zoë_001.safetensors"
    )
    assert save.execute(_identity(9.0), ".hidden", False)[0].endswith("/hidden.safetensors")
    assert save.execute(_identity(9.0), "me.SAFETENSORS", False)[0].endswith("/me.safetensors")
    for nothing in (".", "", "  /  "):
        with pytest.raises(UniIDError, match="no letter or digit to make a file name of"):
            save.execute(_identity(9.0), nothing, False)


def test_saving_never_hides_an_identity_in_another_uniid_folder(comfy, uniid_dirs):
    from uniid_core.identity import save_identity

    first, second = uniid_dirs
    save, load = _node(comfy, "UniIDSaveIdentity"), _node(comfy, "UniIDLoadIdentity")
    older = second / "identities" / "me.safetensors"
    save_identity(_identity(1.0, "man"), older)
    assert save.execute(_identity(2.0), "me", False)[0] == str(first / "identities" / "me_001.safetensors")
    assert {"identities/me.safetensors", "identities/me_001.safetensors"} <= set(
        combo_choices(load, "identity_file")
    )
    assert load.execute("identities/me.safetensors")[1] == "man", "the older identity stays reachable"
    assert save.execute(_identity(3.0), "me", True)[0] == str(older), "overwrite replaces the one listed"
    assert not (first / "identities" / "me.safetensors").exists()
    assert torch.equal(
        load.execute("identities/me.safetensors")[0].adapter_tokens, _identity(3.0).adapter_tokens
    )


def test_loader_names_a_damaged_branch_file(comfy, uniid_dirs, model):
    from uniid_core.errors import CheckpointError

    release = uniid_dirs[0] / "UniID"
    (release / "text_branch_ckpt").mkdir(parents=True)
    (release / "adapter_ckpt").mkdir()
    torch.save(_branch(model, "text_branch."), release / "text_branch_ckpt" / "pytorch_model.bin")
    adapter = release / "adapter_ckpt" / "pytorch_model.bin"
    torch.save(_branch(model, "adapter_branch."), adapter)
    adapter.write_bytes(adapter.read_bytes()[:4096])  # an interrupted browser download
    loader = _node(comfy, "UniIDLoader")
    assert "UniID/" in combo_choices(loader, "uniid_name")
    with pytest.raises(CheckpointError, match="the adapter branch is not there") as info:
        loader.execute("UniID/", "auto")
    assert f"{adapter}: cannot read its tensor names" in str(info.value)
    assert "Download or copy it again" in str(info.value)


def test_two_checkpoints_error_gives_advice_that_works(comfy, uniid_dirs, model, tmp_path):
    from uniid_core.errors import CheckpointError

    release = uniid_dirs[0] / "UniID"
    for step in (6, 12):
        (release / "text_branch" / f"checkpoint-{step}").mkdir(parents=True)
        torch.save(
            _branch(model, "text_branch."),
            release / "text_branch" / f"checkpoint-{step}" / "pytorch_model.bin",
        )
    (release / "adapter_branch" / "checkpoint-16").mkdir(parents=True)
    save_file(
        _branch(model, "adapter_branch."),
        str(release / "adapter_branch" / "checkpoint-16" / "model.safetensors"),
    )
    loader = _node(comfy, "UniIDLoader")
    with pytest.raises(CheckpointError, match="holds 2 text branches") as info:
        loader.execute("UniID/", "auto")
    assert f"move text_branch/checkpoint-6 out of {release}" in str(info.value)
    (release / "text_branch" / "checkpoint-6").rename(tmp_path / "checkpoint-6")  # as the message says
    (both,) = loader.execute("UniID/", "auto")
    assert both.model.text_branch is not None and both.model.adapter_branch is not None
    assert both.model.fingerprint == model.fingerprint


def test_sharded_release_is_one_entry_that_loads_whole(comfy, uniid_dirs, model):
    release = uniid_dirs[0] / "UniID"
    for folder, prefix, suffix in (
        ("text_branch_ckpt", "text_branch.", ".bin"),
        ("adapter_ckpt", "adapter_branch.", ".safetensors"),
    ):
        (release / folder).mkdir(parents=True)
        tensors = _branch(model, prefix)
        keys = sorted(tensors)
        for i in (1, 2):
            shard = release / folder / f"model-0000{i}-of-00002{suffix}"
            part = {k: tensors[k] for k in keys[i - 1 :: 2]}
            if suffix == ".safetensors":
                save_file(part, str(shard))
            else:
                torch.save(part, shard)
    loader = _node(comfy, "UniIDLoader")
    choices = combo_choices(loader, "uniid_name")
    assert "UniID/" in choices and "UniID/text_branch_ckpt/model-00001-of-00002.bin" in choices
    assert not [c for c in choices if "-00002-of-" in c], "a later shard is no choice of its own"
    (both,) = loader.execute("UniID/", "auto")
    assert both.model.fingerprint == model.fingerprint
    (text,) = loader.execute("UniID/text_branch_ckpt/model-00001-of-00002.bin", "auto")
    assert text.model.text_branch is not None and text.model.adapter_branch is None
