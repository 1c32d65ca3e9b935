"""Which .onnx files of an insightface model folder the Face Similarity node offers as recognition models."""

from __future__ import annotations

import pytest

from uniid_core.face.recognition import RECOGNITION_FILES, may_be_recognition_model


@pytest.mark.parametrize(
    "name", [*RECOGNITION_FILES, "models/buffalo_s/w600k_mbf.onnx", "my_arcface_r100.ONNX"]
)
def test_recognition_models_are_offered(name: str) -> None:
    assert may_be_recognition_model(name)


@pytest.mark.parametrize(
    "name",
    [
        "models/buffalo_l/det_10g.onnx",
        "models/antelopev2/scrfd_10g_bnkps.onnx",
        "models/buffalo_l/1k3d68.onnx",
        "models/buffalo_l/2d106det.onnx",
        "models/buffalo_l/genderage.onnx",
        "inswapper_128.onnx",
        "models/buffalo_l/w600k_r50.pth",
    ],
)
def test_detectors_landmarks_attributes_and_swappers_are_not(name: str) -> None:
    assert not may_be_recognition_model(name)
