"""UniID Face Similarity in ComfyUI: scores, ranking, the best image and the table, through the executor.

Three images (another face, the reference face, a dark image the test detector finds no face in) are scored
against an identity encoded from the reference photo, against the photo itself, and with a stand-in
insightface ArcFace model; the image without a face is reported and does not stop the run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.comfyui.conftest import REPO, combo_choices
from tests.comfyui.test_comfy_executor import _DarkBlindDetector, _Server, model_files  # noqa: F401
from tests.eval.conftest import write_arcface_onnx

ARCFACE = "models/buffalo_l/w600k_r50.onnx"


@pytest.fixture(scope="module")
def photos(comfy, model_files):  # noqa: F811
    """input/: the reference face (written by model_files), another face and a dark image, all 128x128."""
    folder = comfy.base / "input"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(folder / "other.png")
    Image.new("RGB", (128, 128), (3, 3, 3)).save(folder / "dark_128.png")
    return [np.asarray(Image.open(folder / name)) for name in ("other.png", "face.png", "dark_128.png")]


@pytest.fixture()
def dark_blind(monkeypatch):
    """A registered test detector: no face in a dark image, the pre-aligned face otherwise."""
    from uniid_core.face import detect

    monkeypatch.setattr(detect, "_BACKENDS", dict(detect._BACKENDS))
    detect.register_face_backend(detect.FaceBackend("dark-blind", _DarkBlindDetector))


@pytest.fixture(scope="module")
def arcface(comfy, model_files):  # noqa: F811
    """A stand-in ArcFace model (and a detector file that must not be offered) in models/insightface."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs the onnx and onnxruntime packages to build and run a stand-in ArcFace model")
    pack = comfy.base / "models" / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True, exist_ok=True)
    write_arcface_onnx(pack / "w600k_r50.onnx")
    (pack / "det_10g.onnx").write_bytes(b"a detector, not a recognition model")
    comfy.folder_paths.filename_list_cache.clear()
    return ARCFACE


@pytest.fixture(scope="module")
def preview_any(comfy):
    """ComfyUI's Preview Any node, registered by its loader as at startup."""
    path = comfy.root / "comfy_extras" / "nodes_preview_any.py"
    assert asyncio.run(comfy.nodes.load_custom_node(str(path), module_parent="comfy_extras"))


def _graph(scorer: str, reference: str) -> dict:
    """Loader -> (identity from face.png) -> Face Similarity of [other, face, dark] -> previews and saves."""
    similarity = {
        "images": ["6", 0], "face_detector": ["1", 2], "scorer": scorer, "face_selection": "largest",
        "provider": "CPU", "face_net": ["1", 1],
    }
    similarity.update({"identity": ["7", 0]} if reference == "identity" else {"reference_photos": ["2", 0]})
    nodes = {
        "1": ("UniIDLoaderAllInOne", {"uniid_name": "small_uniid.safetensors",
                                      "face_net_name": "insightface/face_small.safetensors",
                                      "backend": "dark-blind"}),
        "2": ("LoadImage", {"image": "face.png"}),
        "3": ("LoadImage", {"image": "other.png"}),
        "4": ("LoadImage", {"image": "dark_128.png"}),
        "5": ("ImageBatch", {"image1": ["3", 0], "image2": ["2", 0]}),
        "6": ("ImageBatch", {"image1": ["5", 0], "image2": ["4", 0]}),
        "7": ("UniIDEncodeFace", {"uniid": ["1", 0], "face_net": ["1", 1], "face_detector": ["1", 2],
                                  "image": ["2", 0], "face_selection": "largest", "face_index": 0,
                                  "combine": "mean_features", "on_no_face": "error", "class_word": "auto"}),
        "8": ("UniIDFaceSimilarity", similarity),
        "9": ("PreviewAny", {"source": ["8", 0]}),
        "10": ("SaveImage", {"images": ["8", 2], "filename_prefix": f"ranked_{scorer[:4]}_{reference}"}),
        "11": ("SaveImage", {"images": ["8", 3], "filename_prefix": f"best_{scorer[:4]}_{reference}"}),
    }
    return {k: {"class_type": c, "inputs": i} for k, (c, i) in nodes.items()}


def _execute(comfy, prompt: dict) -> dict:
    """Validate and run the prompt; the history's outputs by node id."""
    import execution

    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("similarity", prompt, None))
    assert valid, (error, node_errors)
    executor = execution.PromptExecutor(_Server(), cache_type=False)
    executor.execute(prompt, "similarity", {}, outputs)
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    assert executor.success, errors
    return executor.history_result["outputs"]


def _saved(comfy, prefix: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((comfy.base / "output").glob(f"{prefix}_*.png"))]


@pytest.mark.parametrize(
    "scorer,reference", [("face_net", "identity"), ("face_net", "photos"), (ARCFACE, "photos")]
)
def test_images_are_scored_ranked_and_the_faceless_one_reported(
    comfy, model_files, photos, dark_blind, arcface, preview_any, scorer, reference  # noqa: F811
):
    outputs = _execute(comfy, _graph(scorer, reference))
    values = [float(v) for v in outputs["9"]["text"]]
    assert len(values) == 3 and math.isnan(values[2])
    assert values[1] == pytest.approx(1.0, abs=1e-3), "the reference face scored against itself"
    assert values[0] < values[1] - 1e-3
    (table,) = outputs["8"]["text"]
    rows = table.splitlines()
    assert rows[2].split()[:2] == ["1", "1"] and rows[3].split()[:2] == ["2", "0"]
    assert "no face found" in rows[4] and "2 of 3 image(s) with a face" in rows[-1]
    assert ("insightface" in rows[0]) == (scorer == ARCFACE)
    ranked = _saved(comfy, f"ranked_{scorer[:4]}_{reference}")
    assert len(ranked) == 3
    for saved, index in zip(ranked, [1, 0, 2], strict=True):
        assert np.array_equal(saved, photos[index])
    (best,) = _saved(comfy, f"best_{scorer[:4]}_{reference}")
    assert np.array_equal(best, photos[1])


def test_scorer_dropdown_offers_recognition_models_only(comfy, arcface):
    choices = combo_choices(comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceSimilarity"], "scorer")
    assert choices[0] == "face_net" and arcface in choices
    assert not [c for c in choices if "det_10g" in c]


def _node(comfy):
    return comfy.nodes.NODE_CLASS_MAPPINGS["UniIDFaceSimilarity"]


def _inputs(pack, small_face_net, **extra) -> dict:
    images = torch.rand(2, 112, 112, 3, generator=torch.Generator().manual_seed(0))
    detector = pack.sockets.FaceDetectorSpec("pre-aligned")
    return dict(images=images, face_detector=detector, face_selection="largest", provider="CPU",
                face_net=pack.sockets.FaceNet(net=small_face_net, source="test"), **extra)


def test_missing_reference_face_net_or_onnxruntime_are_clear_errors(comfy, pack, small_face_net, arcface,
                                                                     monkeypatch):
    from uniid_core.errors import UniIDError
    from uniid_core.identity import Identity

    node = _node(comfy)
    with pytest.raises(UniIDError, match="connect the reference"):
        node.execute(scorer="face_net", **_inputs(pack, small_face_net))
    photos = torch.rand(1, 112, 112, 3)
    with pytest.raises(UniIDError, match="needs the face net: connect face_net"):
        node.execute(scorer="face_net", **{**_inputs(pack, small_face_net), "face_net": None},
                     reference_photos=photos)
    identity = Identity(adapter_tokens=torch.zeros(1, 4, 2048), face_embedding=torch.ones(1, 512) / 512**0.5)
    with pytest.raises(UniIDError, match="connect reference_photos"):
        node.execute(scorer=arcface, **_inputs(pack, small_face_net), identity=identity)
    with pytest.raises(UniIDError, match="carries no face embedding"):
        node.execute(scorer="face_net", **_inputs(pack, small_face_net), identity=Identity())
    monkeypatch.setattr(pack.face_similarity, "available_providers", lambda: [])
    with pytest.raises(UniIDError, match="needs onnxruntime.*pip install onnxruntime"):
        node.execute(scorer=arcface, **_inputs(pack, small_face_net), reference_photos=photos)


def test_a_removed_recognition_model_names_the_folder(comfy, pack, small_face_net):
    from uniid_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="'models/gone/w600k_r50.onnx' was not found in the 'insight"):
        _node(comfy).execute(scorer="models/gone/w600k_r50.onnx", **_inputs(pack, small_face_net),
                             reference_photos=torch.rand(1, 112, 112, 3))


@pytest.fixture()
def latent_to_image(comfy):
    """A test node in VAE Decode's place (the test models have no VAE): latent channels 0-2 as RGB."""

    class UniIDTestLatentToImage:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "decode"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"samples": ("LATENT",)}}

        def decode(self, samples):
            rgb = torch.nn.functional.interpolate(samples["samples"][:, :3], scale_factor=8)
            return (torch.sigmoid(rgb).movedim(1, -1),)

    comfy.nodes.NODE_CLASS_MAPPINGS["UniIDTestLatentToImage"] = UniIDTestLatentToImage
    yield
    comfy.nodes.NODE_CLASS_MAPPINGS.pop("UniIDTestLatentToImage", None)


def test_shipped_workflow_scores_the_generated_batch(comfy, model_files, preview_any, latent_to_image):  # noqa: F811
    """workflows/uniid_face_similarity.json on the small models: four images generated, scored, ranked."""
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import workflow_check

    workflow = json.loads((REPO / "workflows" / "uniid_face_similarity.json").read_text())
    prompt = workflow_check.ui_to_api(workflow, workflow_check.load_snapshot()["nodes"])
    for node in prompt.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="UniIDTestModelSource", inputs={})
        elif kind == "UniIDLoaderAllInOne":
            inputs.update(uniid_name="small_uniid.safetensors", backend="pre-aligned",
                          face_net_name="insightface/face_small.safetensors")
        elif kind == "KSampler":
            inputs["steps"] = 2
        elif kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "VAEDecode":
            node.update(class_type="UniIDTestLatentToImage", inputs={"samples": inputs["samples"]})
    outputs = _execute(comfy, prompt)
    (scores,) = [k for k, node in prompt.items() if node["class_type"] == "PreviewAny"]
    (table,) = outputs[scores]["text"]
    assert "4 of 4 image(s) with a face" in table
    best_index = int(table.splitlines()[2].split()[1])
    generated = _saved(comfy, "uniid_batch")
    (best,) = _saved(comfy, "uniid_best")
    assert len(generated) == 4 and np.array_equal(best, generated[best_index])
