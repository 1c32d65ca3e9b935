"""End to end: an API-format prompt with every UniID node runs through ComfyUI's validator and executor."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.comfyui.conftest import REPO, combo_choices, random_identity

API_PROMPT = Path(__file__).parent / "data" / "api_prompt_v1_nodes.json"
"""An API prompt written against the nodes before their move to ComfyUI's V3 schema: every UniID node
with every input by its name (optional ones included), as scripts and saved API prompts send them."""
ADDED_SINCE_V1 = Path(__file__).parents[1] / "packaging" / "data" / "node_interface_added.json"
"""The nodes added since that prompt was written (listed on purpose)."""


class _Server:
    """The parts of ComfyUI's PromptServer the executor talks to."""

    client_id = None
    last_node_id = None
    sockets_metadata: dict = {}

    def __init__(self) -> None:
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass


@pytest.fixture(scope="module")
def model_files(comfy, uniid_weights, small_sdxl, small_clip):
    """UniID weights, a random IResNet-100 and a face photo on disk; MODEL/CLIP from a test-only node."""
    from safetensors.torch import save_file

    from uniid_core.checkpoint import save_uniid
    from uniid_core.models.iresnet import iresnet100

    face_net = iresnet100()
    with torch.no_grad():
        for module in face_net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_var.fill_(1.0)

    models = comfy.base / "models"
    save_uniid(uniid_weights.model, models / "uniid" / "small_uniid.safetensors", dtype=torch.float16)
    save_file(
        {k: v.contiguous() for k, v in face_net.half().state_dict().items()},
        str(models / "insightface" / "face_small.safetensors"),
    )
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
        comfy.base / "input" / "face.png"
    )

    class UniIDTestModelSource:
        RETURN_TYPES = ("MODEL", "CLIP")
        FUNCTION = "load"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def load(self):
            return (small_sdxl, small_clip)

    comfy.nodes.NODE_CLASS_MAPPINGS["UniIDTestModelSource"] = UniIDTestModelSource
    yield models
    comfy.nodes.NODE_CLASS_MAPPINGS.pop("UniIDTestModelSource", None)


def _prompt():
    apply = {
        "model": ["1", 0],
        "positive": ["7", 0],
        "uniid": ["2", 0],
        "identity": ["6", 0],
        "clip": ["1", 1],
        "merge_step": 1,
        "text_scale_before": 0.5,
        "text_scale_after": 1.8,
        "adapter_scale_before": 0.8,
        "adapter_scale_after": 1.2,
        "rescale": "normalized",
        "start_percent": 0.0,
        "end_percent": 1.0,
    }
    encode = {
        "uniid": ["2", 0],
        "face_net": ["3", 0],
        "face_detector": ["4", 0],
        "image": ["5", 0],
        "face_selection": "largest",
        "face_index": 0,
        "combine": "mean_features",
        "on_no_face": "error",
        "class_word": "auto",
    }
    sampler = {
        "model": ["9", 0],
        "seed": 1,
        "steps": 2,
        "cfg": 4.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "positive": ["9", 1],
        "negative": ["8", 0],
        "latent_image": ["10", 0],
        "denoise": 1.0,
    }
    nodes = {
        "1": ("UniIDTestModelSource", {}),
        "2": ("UniIDLoader", {"uniid_name": "small_uniid.safetensors", "dtype": "auto"}),
        "3": ("UniIDFaceNetLoader", {"face_net_name": "insightface/face_small.safetensors"}),
        "4": (
            "UniIDFaceDetectorLoader",
            {"backend": "pre-aligned", "provider": "CPU", "insightface_model": "antelopev2", "det_size": 640},
        ),
        "5": ("LoadImage", {"image": "face.png"}),
        "6": ("UniIDEncodeFace", encode),
        "7": (
            "UniIDTextEncode",
            {"clip": ["1", 1], "text": "a photo of a <class word>", "class_word": ["6", 2]},
        ),
        "8": ("CLIPTextEncode", {"clip": ["1", 1], "text": "lowres"}),
        "9": ("UniIDApply", apply),
        "10": ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 2}),
        "11": ("KSampler", sampler),
        "12": ("SaveLatent", {"samples": ["11", 0], "filename_prefix": "uniid_test"}),
        "13": ("UniIDSaveIdentity", {"identity": ["6", 0], "name": "test_face", "overwrite": True}),
    }
    return {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}


def test_prompt_runs_through_comfy_executor(comfy, model_files):
    import execution

    prompt = _prompt()
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("uniid-test", prompt, None))
    assert valid, (error, node_errors)
    assert sorted(outputs) == ["12", "13"]
    server = _Server()
    executor = execution.PromptExecutor(server, cache_type=False)
    executor.execute(prompt, "uniid-test", {}, outputs)
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    assert executor.success, errors
    managed = {type(m.model.model).__name__ for m in comfy.mm.current_loaded_models}
    assert "IPProjections" in managed, "ip weights not loaded by ComfyUI"
    assert {"EncoderModules", "FaceRecognitionNet"} <= managed, "face encoders not under model management"
    latents = list((comfy.base / "output").glob("uniid_test*.latent"))
    assert len(latents) == 1
    identity_file = model_files / "uniid" / "identities" / "test_face.safetensors"
    assert identity_file.is_file()
    from uniid_core.identity import load_identity

    saved = load_identity(identity_file)
    assert saved.class_word == "person" and saved.adapter_tokens.shape == (1, 4, 2048)
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["UniIDLoadIdentity"]
    assert "identities/test_face.safetensors" in combo_choices(loader, "identity_file")
    identity, word = loader.execute("identities/test_face.safetensors")
    assert word == "person" and torch.equal(identity.adapter_tokens, saved.adapter_tokens)


def _run(comfy, prompt: dict, prompt_id: str) -> list[str]:
    """Validate and execute ``prompt`` in ComfyUI; returns the ids of its output nodes."""
    import execution

    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    assert valid, (error, node_errors)
    executor = execution.PromptExecutor(_Server(), cache_type=False)
    executor.execute(prompt, prompt_id, {}, outputs)
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    assert executor.success, errors
    return sorted(outputs)


@pytest.fixture(scope="module")
def core_extra_nodes(comfy):
    """ComfyUI's own mask and custom-sampling nodes, registered by its loader as at startup."""
    for name in ("nodes_mask.py", "nodes_custom_sampler.py"):
        loaded = asyncio.run(comfy.nodes.load_custom_node(str(comfy.root / "comfy_extras" / name),
                                                          module_parent="comfy_extras"))
        assert loaded, name


def test_api_prompt_written_for_the_v1_nodes_runs(comfy, model_files, uniid_weights, core_extra_nodes):
    """Every node, input name and option value of a saved API prompt still validates and runs."""
    from safetensors.torch import load_file

    from uniid_core.identity import load_identity, save_identity

    identities = model_files / "uniid" / "identities"
    save_identity(random_identity(uniid_weights, 11), identities / "saved_before.safetensors")
    prompt = json.loads(API_PROMPT.read_text())
    ours = {name for name, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == "custom_nodes.comfyui-uniid"}
    added = set(json.loads(ADDED_SINCE_V1.read_text())["nodes"])
    assert ours - added <= {node["class_type"] for node in prompt.values()}
    assert _run(comfy, prompt, "uniid-api-v1") == ["13", "14", "23", "24"]
    output = comfy.base / "output"
    latents = [load_file(str(next(output.glob(f"{name}_*.latent"))))["latent_tensor"]
               for name in ("uniid_api_ksampler", "uniid_api_custom")]
    for latent in latents:
        assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
    assert not torch.equal(latents[0], latents[1])
    saved = load_identity(identities / "api_face.safetensors")
    assert saved.class_word == "person" and saved.text_tokens.shape == (1, 3, 2048)


class _DarkBlindDetector:
    """A detector backend for the test: no face on a dark photo, the pre-aligned face otherwise."""

    def detect(self, image_rgb: np.ndarray) -> list:
        from uniid_core.face.prealigned import PreAlignedDetector

        return [] if image_rgb.max() < 10 else PreAlignedDetector().detect(image_rgb)


def test_skipped_photos_are_shown_on_the_node_and_logged(comfy, model_files, monkeypatch, caplog):
    """on_no_face = skip: which photo was left out and why, as progress text, text output and log line."""
    from server import PromptServer

    from uniid_core.face import detect

    monkeypatch.setattr(detect, "_BACKENDS", dict(detect._BACKENDS))
    detect.register_face_backend(detect.FaceBackend("dark-blind", _DarkBlindDetector))
    Image.new("RGB", (96, 96)).save(comfy.base / "input" / "dark.png")
    shown = []

    class Server:
        def send_progress_text(self, text, node_id, sid=None):
            shown.append((node_id, text))

    monkeypatch.setattr(PromptServer, "instance", Server(), raising=False)
    nodes = {
        "2": ("UniIDLoader", {"uniid_name": "small_uniid.safetensors", "dtype": "auto"}),
        "3": ("UniIDFaceNetLoader", {"face_net_name": "insightface/face_small.safetensors"}),
        "4": ("UniIDFaceDetectorLoader", {"backend": "dark-blind", "provider": "CPU",
                                          "insightface_model": "buffalo_l", "det_size": 320}),
        "5": ("LoadImage", {"image": "face.png"}),
        "6": ("LoadImage", {"image": "dark.png"}),
        "7": ("ImageBatch", {"image1": ["5", 0], "image2": ["6", 0]}),
        "8": ("UniIDEncodeFace", {"uniid": ["2", 0], "face_net": ["3", 0], "face_detector": ["4", 0],
                                  "image": ["7", 0], "face_selection": "largest", "face_index": 0,
                                  "combine": "mean_features", "on_no_face": "skip", "class_word": "auto"}),
        "9": ("PreviewImage", {"images": ["8", 1]}),
    }
    prompt = {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}
    import execution

    with caplog.at_level("WARNING", logger="UniID"):
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("skip", prompt, None))
        assert valid, (error, node_errors)
        executor = execution.PromptExecutor(_Server(), cache_type=False)
        executor.execute(prompt, "skip", {}, outputs)
    assert executor.success
    (node_id, text), = shown
    assert node_id == "8" and "1 of 2 images used" in text and "skipped image 1: no face found" in text
    assert executor.history_result["outputs"]["8"]["text"] == [text]
    assert any("skipped image 1: no face found" in record.getMessage() for record in caplog.records)


def test_prompt_with_a_value_the_node_does_not_offer_is_refused_before_running(comfy, model_files):
    """Widget values are checked when the prompt is validated: a choice not offered, a number out of range."""
    import execution

    prompt = _prompt()
    prompt["4"]["inputs"]["backend"] = "dlib"
    prompt["9"]["inputs"]["merge_step"] = 1001
    valid, _, _, node_errors = asyncio.run(execution.validate_prompt("bad", prompt, None))
    assert not valid
    details = {node: " ".join(e["details"] for e in found["errors"]) for node, found in node_errors.items()}
    assert "backend: 'dlib' is not one of ['insightface', 'mtcnn', 'pre-aligned']" in details["4"]
    assert "merge_step: 1001 is above the maximum 1000" in details["9"]


def _shipped_per_block_prompt() -> dict:
    """The shipped per-block workflow as an API prompt, on the test's small stand-in models (the random
    test photo has no face for mtcnn, so the detector is pre-aligned here)."""
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import workflow_check

    workflow = json.loads((REPO / "workflows" / "uniid_per_block.json").read_text())
    prompt = workflow_check.ui_to_api(workflow, workflow_check.load_snapshot()["nodes"])
    by_type = {node["class_type"]: node for node in prompt.values()}
    assert by_type["UniIDApply"]["inputs"]["rescaler"][0] in prompt
    by_type["CheckpointLoaderSimple"].update(class_type="UniIDTestModelSource", inputs={})
    by_type["UniIDLoader"]["inputs"]["uniid_name"] = "small_uniid.safetensors"
    by_type["UniIDFaceNetLoader"]["inputs"]["face_net_name"] = "insightface/face_small.safetensors"
    by_type["UniIDFaceDetectorLoader"]["inputs"]["backend"] = "pre-aligned"
    by_type["KSampler"]["inputs"]["steps"] = 2
    by_type["EmptyLatentImage"]["inputs"].update(width=64, height=64)
    decode = next(k for k, node in prompt.items() if node["class_type"] == "VAEDecode")
    samples = prompt.pop(decode)["inputs"]["samples"]
    save = {"samples": samples, "filename_prefix": "uniid_per_block_test"}
    by_type["SaveImage"].update(class_type="SaveLatent", inputs=save)
    return prompt


def test_shipped_per_block_workflow_runs_and_bad_rescaler_widgets_are_refused(comfy, model_files):
    """The shipped per-block graph validates and executes; a parameter the strategy does not take and a
    layer spec that does not read stop the prompt before it runs."""
    import execution
    from safetensors.torch import load_file

    prompt = _shipped_per_block_prompt()
    _run(comfy, prompt, "uniid-per-block")
    (saved,) = (comfy.base / "output").glob("uniid_per_block_test*.latent")
    latent = load_file(str(saved))["latent_tensor"]
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()

    by_type = {node["class_type"]: node for node in prompt.values()}
    by_type["UniIDRescaler"]["inputs"]["params"] = "strength=2"
    by_type["UniIDRescalerPerBlock"]["inputs"]["layers"] = "input:1, 5"
    _, _, outputs, node_errors = asyncio.run(execution.validate_prompt("bad-rescaler", prompt, None))
    save = next(k for k, node in prompt.items() if node["class_type"] == "SaveLatent")
    assert save not in outputs, "the sampling branch must be refused (only the face preview may run)"
    details = " ".join(e["details"] for found in node_errors.values() for e in found["errors"])
    assert "rescaler 'normalized' has no parameter 'strength' (parameters: none)" in details
    assert "'5': write each entry as selector:weight" in details


def test_identity_batch_and_negative_identity_prompt(comfy, model_files):
    """Encode Face per_image on two photos + UniID Identity Batch with a third identity = 3 identities for
    a latent batch of 3 (its size linked from the count output), a negative identity, the batch saved;
    loaded again for a latent batch of 2 it is refused with a message naming both counts."""
    from uniid_core.identity import load_identity

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(comfy.base / "input" / "face_2.png")
    loaders = {
        "2": ("UniIDLoader", {"uniid_name": "small_uniid.safetensors", "dtype": "auto"}),
        "3": ("UniIDFaceNetLoader", {"face_net_name": "insightface/face_small.safetensors"}),
        "4": ("UniIDFaceDetectorLoader", {"backend": "pre-aligned", "provider": "CPU",
                                          "insightface_model": "buffalo_l", "det_size": 320}),
    }

    def encode(image: str, combine: str) -> dict:
        return {"uniid": ["2", 0], "face_net": ["3", 0], "face_detector": ["4", 0], "image": [image, 0],
                "face_selection": "largest", "face_index": 0, "combine": combine, "on_no_face": "error",
                "class_word": "auto"}

    def generate(identity: list, latent: dict, prefix: str) -> dict:
        apply = {**_prompt()["9"]["inputs"], "positive": ["7", 0], "identity": identity,
                 "negative_identity": ["21", 0]}
        sampler = {**_prompt()["11"]["inputs"], "latent_image": ["10", 0]}
        return {
            "1": ("UniIDTestModelSource", {}),
            "7": ("CLIPTextEncode", {"clip": ["1", 1], "text": "a photo of a person"}),
            "8": ("CLIPTextEncode", {"clip": ["1", 1], "text": "lowres"}),
            "9": ("UniIDApply", apply),
            "10": ("EmptyLatentImage", {"width": 64, "height": 64, **latent}),
            "11": ("KSampler", sampler),
            "12": ("SaveLatent", {"samples": ["11", 0], "filename_prefix": prefix}),
            "20": ("LoadImage", {"image": "face_2.png"}),
            "21": ("UniIDEncodeFace", encode("20", "mean_features")),
        }

    nodes = {
        **loaders,
        **generate(["24", 0], {"batch_size": ["24", 2]}, "uniid_batch"),
        "5": ("LoadImage", {"image": "face.png"}),
        "22": ("ImageBatch", {"image1": ["5", 0], "image2": ["20", 0]}),
        "23": ("UniIDEncodeFace", encode("22", "per_image")),
        "24": ("UniIDIdentityBatch", {"identity_1": ["23", 0], "identity_2": ["21", 0]}),
        "25": ("UniIDSaveIdentity", {"identity": ["24", 0], "name": "trio", "overwrite": True}),
    }
    prompt = {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}
    assert _run(comfy, prompt, "uniid-batch") == ["12", "25"]
    latent = load_latent(next((comfy.base / "output").glob("uniid_batch_*.latent")))
    assert latent.shape == (3, 4, 8, 8) and torch.isfinite(latent).all()
    trio = load_identity(model_files / "uniid" / "identities" / "trio.safetensors")
    assert trio.count == 3 and trio.adapter_tokens.shape == (3, 4, 2048)
    assert trio.face_embedding.shape == (3, 512)
    assert not torch.allclose(trio.adapter_tokens[0], trio.adapter_tokens[1], atol=1e-3)
    torch.testing.assert_close(trio.adapter_tokens[1], trio.adapter_tokens[2])  # face_2 in the batch = alone

    import execution

    nodes = {**loaders, **generate(["26", 0], {"batch_size": 2}, "uniid_refused"),
             "26": ("UniIDLoadIdentity", {"identity_file": "identities/trio.safetensors"})}
    prompt = {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("refused", prompt, None))
    assert valid, (error, node_errors)
    executor = execution.PromptExecutor(_Server(), cache_type=False)
    executor.execute(prompt, "refused", {}, outputs)
    (error,) = [data for event, data in executor.status_messages if event == "execution_error"]
    assert error["node_id"] == "11"
    assert "identity is a batch of 3 identities but the latent batch is 2" in error["exception_message"]


def load_latent(path: Path) -> torch.Tensor:
    """The latent tensor of a ComfyUI .latent file."""
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize(
    "name,latents", [("uniid_identity_batch.json", 3), ("uniid_negative_identity.json", 1)]
)
def test_shipped_batch_and_negative_identity_workflows_run(comfy, model_files, name, latents):
    """The shipped workflows, converted to API prompts as the frontend does, on the small stand-in models
    (pre-aligned detector: random photos have no face for mtcnn), 2 steps at 64x64."""
    import sys

    repo = Path(__file__).resolve().parents[2]
    if str(repo / "scripts") not in sys.path:
        sys.path.insert(0, str(repo / "scripts"))
    import workflow_check

    workflow = json.loads((repo / "workflows" / name).read_text())
    prompt = workflow_check.ui_to_api(workflow, workflow_check.load_snapshot()["nodes"])
    rng = np.random.default_rng(2)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="UniIDTestModelSource", inputs={})
        elif kind == "UniIDLoader":
            inputs["uniid_name"] = "small_uniid.safetensors"
        elif kind == "UniIDFaceNetLoader":
            inputs["face_net_name"] = "insightface/face_small.safetensors"
        elif kind == "UniIDFaceDetectorLoader":
            inputs["backend"] = "pre-aligned"
        elif kind == "LoadImage":
            pixels = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(comfy.base / "input" / inputs["image"])
        elif kind == "KSampler":
            inputs["steps"] = 2
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "VAEDecode":
            save = {"samples": inputs["samples"], "filename_prefix": name}
            node.update(class_type="SaveLatent", inputs=save)
    prompt = {k: v for k, v in prompt.items() if v["class_type"] != "SaveImage"}
    _run(comfy, prompt, name)
    latent = load_latent(next((comfy.base / "output").glob(f"{name}_*.latent")))
    assert latent.shape == (latents, 4, 8, 8) and torch.isfinite(latent).all()
