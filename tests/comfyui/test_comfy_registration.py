"""ComfyUI's own loader registers every UniID node; folders, dropdowns and error messages users see."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.comfyui.conftest import combo_choices, small_uniid_model

NODES = [
    "UniIDLoader",
    "UniIDFaceNetLoader",
    "UniIDFaceDetectorLoader",
    "UniIDEncodeFace",
    "UniIDApply",
    "UniIDSaveIdentity",
    "UniIDLoadIdentity",
    "UniIDTextEncode",
    "UniIDOfficialSchedule",
    "UniIDOfficialNoise",
    "UniIDLoaderAllInOne",
    "UniIDApplySimple",
    "UniIDFaceSimilarity",
    "UniIDIdentityBatch",
    "UniIDRescaler",
    "UniIDRescalerPerBlock",
]


def test_every_node_is_registered_by_comfy_loader(comfy):
    for name in NODES:
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[name]
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.comfyui-uniid"
        assert cls.CATEGORY == "UniID"
        assert callable(getattr(cls(), cls.FUNCTION))
        assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS[name].startswith("UniID ")
        spec = cls.INPUT_TYPES(include_hidden=False)
        json.dumps(spec)
        for section in spec.values():
            for input_name, entry in section.items():
                assert len(entry) == 2 and entry[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    assert "insightface" not in sys.modules, "the pack must import insightface lazily"


def _branch(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_every_registered_node_has_a_help_page_comfyui_serves(comfy):
    from pathlib import Path

    web = Path(comfy.nodes.EXTENSION_WEB_DIRS["comfyui-uniid"]).resolve()
    ours = [name for name, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == "custom_nodes.comfyui-uniid"]
    assert set(NODES) <= set(ours)
    missing = [name for name in ours if not (web / "docs" / f"{name}.md").is_file()]
    assert not missing, f"the frontend finds no help page for {missing}: add web/docs/<NodeName>.md"


def test_model_folders_follow_extra_model_paths(comfy, tmp_path):
    fp = comfy.folder_paths
    assert "uniid" in fp.folder_names_and_paths and "insightface" in fp.folder_names_and_paths
    extra = tmp_path / "elsewhere"
    (extra / "official" / "adapter_ckpt").mkdir(parents=True)
    adapter = _branch(small_uniid_model([64]), "adapter_branch.")
    torch.save(adapter, extra / "official" / "adapter_ckpt" / "pytorch_model.bin")
    (extra / "mine.safetensors").write_bytes(b"weights")
    fp.add_model_folder_path("uniid", str(extra))
    fp.filename_list_cache.clear()
    choices = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoader"], "uniid_name")
    assert "mine.safetensors" in choices and "official/" in choices


def test_dropdowns_keep_face_nets_and_uniid_weights_apart(comfy, tmp_path):
    from safetensors.torch import save_file

    fp = comfy.folder_paths
    extra = tmp_path / "shared_uniid"
    extra.mkdir()
    save_file({"x": torch.zeros(1)}, str(extra / "uniid_weights.safetensors"), metadata={"format": "uniid"})
    save_file({"x": torch.zeros(1)}, str(extra / "face_backbone.safetensors"))
    torch.save({"x": torch.zeros(1)}, extra / "glint360k_r100.pth")
    fp.add_model_folder_path("uniid", str(extra))
    fp.filename_list_cache.clear()
    uniid = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoader"], "uniid_name")
    face = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceNetLoader"], "face_net_name")
    assert "uniid_weights.safetensors" in uniid and "glint360k_r100.pth" not in uniid
    assert "uniid/glint360k_r100.pth" in face and "uniid/face_backbone.safetensors" in face
    assert "uniid/uniid_weights.safetensors" not in face


def test_release_folder_is_one_entry_and_its_parts_stay_pickable(comfy, tmp_path):
    """A release dropped into models/uniid as it comes: one folder entry, branch files, face net inside."""
    from safetensors.torch import save_file

    from uniid_core.models.iresnet import FaceRecognitionNet

    fp = comfy.folder_paths
    root = tmp_path / "uniid_root"
    release = root / "UniID"
    model = small_uniid_model([64, 64])
    text_dir = release / "text_branch" / "checkpoint-12"
    text_dir.mkdir(parents=True)
    text = {f"module.{k}": v for k, v in _branch(model, "text_branch.").items()}
    torch.save(text, text_dir / "pytorch_model.bin")
    torch.save({"state": {}}, text_dir / "optimizer.bin")
    (release / "adapter_branch").mkdir()
    save_file(_branch(model, "adapter_branch."), str(release / "adapter_branch" / "model.safetensors"))
    (release / "face_recognition").mkdir()
    face_net = FaceRecognitionNet(blocks=(1, 1, 1, 1)).state_dict()
    torch.save(face_net, release / "face_recognition" / "backbone.pth")
    fp.add_model_folder_path("uniid", str(root))
    fp.filename_list_cache.clear()
    loader_cls = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoader"]
    uniid = combo_choices(loader_cls, "uniid_name")
    face = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceNetLoader"], "face_net_name")
    text_file = "UniID/text_branch/checkpoint-12/pytorch_model.bin"
    assert "UniID/" in uniid and text_file in uniid and "UniID/adapter_branch/model.safetensors" in uniid
    assert not any(n.startswith("UniID/") and ("optimizer" in n or "backbone" in n) for n in uniid)
    assert "uniid/UniID/face_recognition/backbone.pth" in face
    assert not any(name.startswith("uniid/UniID/") and "branch" in name for name in face)
    (both,) = loader_cls.execute("UniID/", "auto")
    assert both.model.text_branch is not None and both.model.adapter_branch is not None
    assert both.model.fingerprint == model.fingerprint
    (text_only,) = loader_cls.execute(text_file, "auto")
    assert text_only.model.adapter_branch is None
    face_path = comfy.pack.nodes.paths.resolve_face_net("uniid/UniID/face_recognition/backbone.pth")
    assert Path(face_path) == release / "face_recognition" / "backbone.pth"


def test_insightface_dropdown_puts_the_official_pack_first(comfy, tmp_path):
    fp = comfy.folder_paths
    for name in ("antelopev2", "buffalo_l", "another"):
        (tmp_path / "insight" / "models" / name).mkdir(parents=True)
    fp.add_model_folder_path("insightface", str(tmp_path / "insight"))
    try:
        inputs = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceDetectorLoader"].INPUT_TYPES()["required"]
    finally:
        fp.folder_names_and_paths["insightface"][0].remove(str(tmp_path / "insight"))
    assert inputs["insightface_model"][1]["options"][:3] == ["buffalo_l", "another", "antelopev2"]
    assert inputs["det_size"][1]["default"] == 320


def test_empty_files_are_not_offered(comfy, tmp_path):
    fp = comfy.folder_paths
    extra = tmp_path / "with_empty"
    extra.mkdir()
    (extra / "interrupted.safetensors").write_bytes(b"")
    (extra / "interrupted.pth").write_bytes(b"")
    fp.add_model_folder_path("uniid", str(extra))
    fp.filename_list_cache.clear()
    uniid = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoader"], "uniid_name")
    face = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceNetLoader"], "face_net_name")
    assert not [c for c in uniid + face if "interrupted" in c]


def test_identities_are_saved_in_the_first_configured_folder(comfy, pack, tmp_path, monkeypatch):
    from uniid_core.identity import Identity

    fp = comfy.folder_paths
    user_folder = tmp_path / "my_models" / "uniid"
    table = dict(fp.folder_names_and_paths)
    table.pop("uniid")
    monkeypatch.setattr(fp, "folder_names_and_paths", table)
    fp.add_model_folder_path("uniid", str(user_folder))  # as extra_model_paths.yaml does, before the pack
    pack.paths.register_folders()
    assert fp.get_folder_paths("uniid") == [str(user_folder), str(comfy.root / "models" / "uniid")]
    identity = Identity(adapter_tokens=torch.zeros(1, 4, 2048), class_word="woman")
    saved = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDSaveIdentity"].execute(identity, "me", False)[0]
    assert saved == str(user_folder / "identities" / "me.safetensors")
    other = tmp_path / "other" / "identities"
    other.mkdir(parents=True)
    (other / "them.safetensors").write_bytes((user_folder / "identities" / "me.safetensors").read_bytes())
    fp.add_model_folder_path("uniid", str(other.parent))
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoadIdentity"]
    choices = combo_choices(loader, "identity_file")
    assert {"identities/me.safetensors", "identities/them.safetensors"} <= set(choices)
    loaded, word = loader.execute("identities/them.safetensors")
    assert word == "woman" and torch.equal(loaded.adapter_tokens, identity.adapter_tokens)


def test_missing_insightface_pack_names_every_folder(comfy, tmp_path):
    from uniid_core.errors import FaceDetectionError

    extra = tmp_path / "shared_insightface"
    comfy.folder_paths.add_model_folder_path("insightface", str(extra))
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceDetectorLoader"]
    with pytest.raises(FaceDetectionError) as info:
        loader.execute("insightface", "CPU", "antelopev2", 640)
    for folder in comfy.folder_paths.get_folder_paths("insightface"):
        assert os.path.join(folder, "models", "antelopev2") in str(info.value)


def test_missing_file_names_folder_and_file(comfy):
    from uniid_core.errors import CheckpointError

    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoader"]
    with pytest.raises(
        CheckpointError, match=r"'absent\.safetensors' was not found in the 'uniid' model folder"
    ):
        loader.execute("absent.safetensors", "auto")
    face = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceNetLoader"]
    with pytest.raises(CheckpointError, match="'insightface' model folder"):
        face.execute("insightface/glintr100.pth")


def _fake_model(name: str, unet_config: dict, unet: bool) -> types.SimpleNamespace:
    diffusion = types.SimpleNamespace(input_blocks=[], output_blocks=[]) if unet else types.SimpleNamespace()
    config = type(name, (), {"unet_config": unet_config})()
    base = type(name, (), {})()
    base.model_config, base.diffusion_model = config, diffusion
    return types.SimpleNamespace(model=base)


@pytest.mark.parametrize(
    "name,config,unet,hint",
    [
        ("SD15", {"context_dim": 768, "adm_in_channels": None}, True, "Stable Diffusion 1.x"),
        ("SDXLRefiner", {"context_dim": 1280, "adm_in_channels": 2560}, True, "refiner"),
        ("Flux", {"context_in_dim": 4096}, False, "Flux, SD3"),
        ("SD3", {"context_dim": None}, False, "not a UNet"),
    ],
)
def test_non_sdxl_models_are_refused_clearly(pack, name, config, unet, hint):
    from uniid_core.errors import ModelFamilyError
    from uniid_core.family import SDXL

    with pytest.raises(ModelFamilyError, match="only with SDXL") as info:
        pack.base_model.check_family(_fake_model(name, config, unet), SDXL)
    assert hint in str(info.value) and name in str(info.value)


def _apply_defaults(pack, model, uniid_weights, identity):
    """UniID Apply with the official defaults on a one-entry, all-zero positive conditioning."""
    return pack.apply.UniIDApply.execute(
        model, [[torch.zeros(1, 77, 2048), {}]], uniid_weights, identity,
        5, 0.5, 1.8, 0.8, 1.2, "normalized", 0.0, 1.0,
    )


def test_identity_from_other_weights_is_refused(pack, small_sdxl, uniid_weights):
    from uniid_core.errors import IdentityMismatchError
    from uniid_core.identity import Identity

    identity = Identity(adapter_tokens=torch.zeros(1, 4, 2048), model_fingerprint="0123456789abcdef")
    with pytest.raises(IdentityMismatchError, match="encode the face again"):
        _apply_defaults(pack, small_sdxl, uniid_weights, identity)


def test_text_tokens_need_clip_or_a_stored_anchor(pack, small_sdxl, uniid_weights):
    from uniid_core.errors import UniIDError
    from uniid_core.identity import Identity

    identity = Identity(
        text_tokens=torch.ones(1, 3, 2048),
        adapter_tokens=torch.zeros(1, 4, 2048),
        model_fingerprint=uniid_weights.fingerprint,
    )
    with pytest.raises(UniIDError, match="clip input"):
        _apply_defaults(pack, small_sdxl, uniid_weights, identity)


def test_rescaler_dropdown_lists_registered_strategies(comfy, pack):
    from uniid_core.attention import register_rescaler

    register_rescaler("test_half", lambda text, ip, scale, layer: text + 0.5 * scale * ip)
    choices = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDApply"], "rescale")
    assert choices[0] == "normalized" and {"add", "test_half"} <= set(choices)


def test_text_encode_substitutes_class_word(comfy, small_clip):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDTextEncode"]
    conditioning, prompt = node.execute(small_clip, "a photo of a <class word> in Paris", "woman")
    assert prompt == "a photo of a woman in Paris"
    assert conditioning[0][0].shape == (1, 77, 2048)
    assert conditioning[0][1]["uniid_prompt_tokens"] == 7


def test_detector_loader_backends(comfy):
    import numpy as np

    from uniid_core.errors import FaceDetectionError

    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceDetectorLoader"]
    (aligned,) = loader.execute("pre-aligned", "CPU", "antelopev2", 640)
    assert len(aligned.get().detect(np.zeros((112, 112, 3), np.uint8))) == 1
    with pytest.raises(FaceDetectionError, match=r"models/insightface/models/antelopev2"):
        loader.execute("insightface", "CPU", "antelopev2", 640)
    try:
        (mtcnn,) = loader.execute("mtcnn", "CPU", "antelopev2", 640)
    except FaceDetectionError as exc:
        pytest.skip(f"needs the MTCNN model files: {exc}")
    assert mtcnn.get().detect(np.zeros((160, 160, 3), np.uint8)) == []


def test_names_file_picks_the_anchor_names(comfy, pack, small_sdxl, small_clip, uniid_weights, tmp_path):
    """UniID Apply's names_file: official by default, the project list, or a user list in uniid/names/."""
    from uniid_core.anchor import load_names
    from uniid_core.identity import Identity

    (tmp_path / "names_root" / "names").mkdir(parents=True)
    mine = tmp_path / "names_root" / "names" / "mine.txt"
    mine.write_text("Ada Lovelace Byron King\nAlan Mathison Turing\n", encoding="utf-8")
    comfy.folder_paths.add_model_folder_path("uniid", str(tmp_path / "names_root"))
    spec = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDApply"].INPUT_TYPES()["optional"]["names_file"]
    choices = spec[1]["options"]
    assert choices[:2] == ["official", "uniid_project"] and "names/mine.txt" in choices
    assert spec[1]["default"] == "official"
    identity = Identity(
        text_tokens=torch.randn(1, 3, 2048, generator=torch.Generator().manual_seed(0)),
        adapter_tokens=torch.zeros(1, 4, 2048),
        model_fingerprint=uniid_weights.fingerprint,
    )
    norms = {}
    for choice in ("official", "uniid_project", "names/mine.txt"):
        _, positive = pack.apply.UniIDApply.execute(
            small_sdxl, [[torch.zeros(1, 77, 2048), {}]], uniid_weights, identity,
            5, 0.5, 1.8, 0.8, 1.2, "normalized", 0.0, 1.0, clip=small_clip, names_file=choice,
        )
        norms[choice] = positive[0][0][0, 1:4, :768].norm(dim=-1)
    for choice, names in (("official", None), ("uniid_project", "uniid_project"), ("names/mine.txt", mine)):
        expected = pack.anchor_clip.anchor_for_clip(small_clip, 3, load_names(names))
        torch.testing.assert_close(norms[choice], expected.norms_l)
    assert (norms["official"] - norms["uniid_project"]).abs().max() > 1e-3
    assert (norms["official"] - norms["names/mine.txt"]).abs().max() > 1e-3
