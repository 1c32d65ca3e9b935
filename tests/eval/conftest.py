"""Fixtures for scoring tests: real photos, MTCNN, a small random face net, a stand-in ArcFace ONNX model and
a tiny random transformers CLIP folder (all made here; nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.core.conftest import randomize
from tests.face.conftest import group_photo, mtcnn, sample_images  # noqa: F401 (fixtures used here)
from uniid_core.face.image import load_image
from uniid_core.models.iresnet import FaceRecognitionNet

REPO_ROOT = Path(__file__).resolve().parents[2]
EILEEN = REPO_ROOT / "scripts" / "assets" / "eileen_collins.jpg"
CLIP_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def eileen() -> np.ndarray:
    """The public-domain portrait shipped in the repo (one face), RGB uint8."""
    return load_image(EILEEN)


@pytest.fixture(scope="session")
def small_face_net() -> FaceRecognitionNet:
    """IResNet with one block per stage and random non-degenerate weights (eval, frozen)."""
    return randomize(FaceRecognitionNet(blocks=(1, 1, 1, 1)), seed=3).eval().requires_grad_(False)


def write_arcface_onnx(
    path: Path, seed: int = 0, normalizes_itself: bool = False, batch: int | str = "N"
) -> Path:
    """A tiny ArcFace-shaped ONNX model: (N,3,112,112) -> 8x8 average pool -> random linear map -> (N,64).

    With ``normalizes_itself`` the graph starts with Sub and Mul nodes (as the MXNet-era exports do), which
    insightface reads as "feed raw 0..255 pixels". ``batch`` an int fixes the batch size of the graph.
    """
    from onnx import TensorProto, helper, save_model

    weight = np.random.default_rng(seed).standard_normal((3 * 14 * 14, 64)).astype(np.float32)
    nodes, inits, source = (
        [],
        [helper.make_tensor("W", TensorProto.FLOAT, list(weight.shape), weight.ravel())],
        "data",
    )
    if normalizes_itself:
        inits += [
            helper.make_tensor("mean", TensorProto.FLOAT, [1], [127.5]),
            helper.make_tensor("scale", TensorProto.FLOAT, [1], [1 / 127.5]),
        ]
        nodes += [
            helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
            helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1"),
        ]
        source = "scaled"
    nodes += [
        helper.make_node(
            "AveragePool", [source], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "W"], ["683"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, 64])],
        inits,
    )
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture(scope="session")
def arcface_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A buffalo_l-like folder: stand-in detector (tests/face) and recognition model w600k_r50.onnx."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs the onnx and onnxruntime packages to build and run a stand-in ArcFace model")
    from tests.face.conftest import _fake_scrfd

    folder = tmp_path_factory.mktemp("insightface") / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    _fake_scrfd(folder / "det_10g.onnx")
    write_arcface_onnx(folder / "w600k_r50.onnx")
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer transformers CLIP saved with a byte-level tokenizer and a preprocessor config."""
    from transformers import CLIPConfig, CLIPModel

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from standin_weights import write_tokenizer_files
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    folder = write_tokenizer_files(tmp_path_factory.mktemp("clip") / "clip-tiny")
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = dict(small, vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513)
    vision = dict(small, image_size=CLIP_IMAGE_SIZE, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    settings = {
        "size": {"shortest_edge": CLIP_IMAGE_SIZE},
        "crop_size": {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        "do_resize": True,
        "do_center_crop": True,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder
