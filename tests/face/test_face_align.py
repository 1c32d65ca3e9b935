"""Alignment: the similarity estimate, the warp, channel order and the official [-1, 1] tensor."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from uniid_core.errors import FaceDetectionError
from uniid_core.face.align import (
    ARCFACE_TEMPLATE,
    align_face,
    alignment_matrix,
    estimate_similarity,
    faces_to_tensor,
    resize_aligned,
    stack_aligned,
)


def _similarity(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_estimate_recovers_an_exact_similarity() -> None:
    truth = _similarity(2.5, 0.4, (-30.0, 17.0))
    src = np.random.default_rng(0).uniform(0, 300, (5, 2))
    assert np.allclose(estimate_similarity(src, _apply(truth, src)), truth, atol=1e-9)


def test_estimate_matches_scikit_image_least_squares() -> None:
    if importlib.util.find_spec("skimage") is None:
        pytest.skip("needs scikit-image (insightface's reference estimator) for this cross-check")
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(3)
    for _ in range(5):
        src = rng.uniform(0, 500, (5, 2))
        dst = ARCFACE_TEMPLATE.astype(np.float64)
        if hasattr(SimilarityTransform, "from_estimate"):
            reference = SimilarityTransform.from_estimate(src, dst)
        else:
            reference = SimilarityTransform()
            reference.estimate(src, dst)
        assert np.allclose(estimate_similarity(src, ARCFACE_TEMPLATE), reference.params[:2], atol=1e-8)


def test_mirrored_points_still_give_a_rotation_not_a_reflection() -> None:
    src = ARCFACE_TEMPLATE.astype(np.float64).copy()
    src[:, 0] = 112 - src[:, 0]
    matrix = estimate_similarity(src, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_template_landmarks_give_identity_crop() -> None:
    img = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.allclose(alignment_matrix(ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    assert np.array_equal(align_face(img, ARCFACE_TEMPLATE), img)


def test_warp_undoes_a_known_transform_and_fills_black() -> None:
    rng = np.random.default_rng(2)
    face = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    canvas = np.zeros((400, 400, 3), np.uint8)
    canvas[150:262, 100:212] = face
    landmarks = ARCFACE_TEMPLATE + np.array([100.0, 150.0], np.float32)
    assert np.array_equal(align_face(canvas, landmarks), face)
    out = align_face(canvas, ARCFACE_TEMPLATE * 0.5 + 350)
    assert out.shape == (112, 112, 3) and (out[100:, 100:] == 0).all()


def test_red_stays_in_channel_zero() -> None:
    canvas = np.full((300, 300, 3), 40, np.uint8)
    canvas[100:200, 100:200] = (255, 0, 0)
    landmarks = ARCFACE_TEMPLATE * (100 / 112) + 100
    crop = align_face(canvas, landmarks)
    centre = crop[40:70, 40:70].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 250 and centre[1] < 5 and centre[2] < 5


def test_align_refuses_bad_input() -> None:
    with pytest.raises(FaceDetectionError, match="HxWx3 uint8"):
        align_face(np.zeros((100, 100), np.uint8), ARCFACE_TEMPLATE)
    with pytest.raises(FaceDetectionError, match="5 finite"):
        align_face(np.zeros((100, 100, 3), np.uint8), np.zeros((4, 2)))
    with pytest.raises(FaceDetectionError, match="coincide"):
        align_face(np.zeros((100, 100, 3), np.uint8), np.ones((5, 2)))


def test_faces_to_tensor_is_the_official_arithmetic() -> None:
    torch = pytest.importorskip("torch")
    crops = np.random.default_rng(4).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    crops[0, 0, 0] = (0, 255, 128)
    out = faces_to_tensor(list(crops))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 112, 112) and out.is_contiguous()
    expected = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() * (1 / 255) - 0.5) / 0.5
    assert torch.equal(out, expected)
    assert out[0, :, 0, 0].tolist() == [-1.0, 1.0, pytest.approx(128 / 255 * 2 - 1, abs=1e-6)]
    assert faces_to_tensor(crops[0]).shape == (1, 3, 112, 112)


def test_stack_and_resize_helpers() -> None:
    assert stack_aligned([]).shape == (0, 112, 112, 3)
    with pytest.raises(FaceDetectionError, match="aligned uint8 crops"):
        stack_aligned(np.zeros((2, 100, 100, 3), np.uint8))
    assert resize_aligned(np.zeros((224, 200, 3), np.uint8)).shape == (112, 112, 3)
    assert resize_aligned(np.zeros((64, 64, 3), np.uint8)).shape == (112, 112, 3)
