"""The same real-photo checks for every detector backend: MTCNN always, insightface when its models exist."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from uniid_core.face.align import ARCFACE_TEMPLATE, align_face
from uniid_core.face.detect import DetectedFace, FaceDetector, sort_left_to_right
from uniid_core.face.references import prepare_faces, select_face

BACKENDS = ["mtcnn", "insightface_detector"]
MIN_SCORE = {"mtcnn": 0.9, "insightface_detector": 0.5}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, FaceDetector]:
    """(fixture name, detector) for each backend; insightface skips naming the folders it looked in."""
    return request.param, request.getfixturevalue(request.param)


def _inside(face: DetectedFace) -> bool:
    x1, y1, x2, y2 = face.box
    xs, ys = face.landmarks[:, 0], face.landmarks[:, 1]
    return bool((xs > x1).all() and (xs < x2).all() and (ys > y1).all() and (ys < y2).all())


def _arcface_order(face: DetectedFace) -> bool:
    """Left eye / left mouth corner (as seen) left of their partners, eyes above nose above mouth."""
    p = face.landmarks
    return bool(
        p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0] and max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1])
    )


def _patch(image: np.ndarray, face: DetectedFace, margin: float) -> np.ndarray:
    x1, y1, x2, y2 = face.box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * margin
    return image[max(0, int(cy - half)) : int(cy + half), max(0, int(cx - half)) : int(cx + half)].copy()


def test_single_portrait(backend: tuple[str, FaceDetector], portrait: np.ndarray) -> None:
    name, detector = backend
    faces = detector.detect(portrait)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > MIN_SCORE[name]
    assert face.gender is None if name == "mtcnn" else face.gender in ("man", "woman")
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    assert _inside(face) and _arcface_order(face)
    assert np.abs(face.landmarks - ARCFACE_TEMPLATE).mean() < 6.0


def test_group_photo_six_faces_and_selection(
    backend: tuple[str, FaceDetector], group_photo: np.ndarray
) -> None:
    name, detector = backend
    faces = detector.detect(group_photo)
    assert len(faces) == 6
    height, width = group_photo.shape[:2]
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 60 < x2 - x1 < 200 and face.score > MIN_SCORE[name]
        assert _inside(face)
    assert sum(_arcface_order(f) for f in faces) >= 5
    ordered = sort_left_to_right(faces)
    assert [round(f.box[0]) for f in ordered] == sorted(round(f.box[0]) for f in faces)
    for index in (0, 3, 5):
        assert select_face(faces, index)[1] is ordered[index]
    assert select_face(faces, "largest")[1].area == max(f.area for f in faces)
    assert select_face(faces, "score")[1].score == max(f.score for f in faces)


def test_mirrored_photo_keeps_arcface_order(
    backend: tuple[str, FaceDetector], group_photo: np.ndarray
) -> None:
    faces = backend[1].detect(np.ascontiguousarray(group_photo[:, ::-1]))
    assert len(faces) == 6
    assert all(f.landmarks[0, 0] < f.landmarks[1, 0] and f.landmarks[3, 0] < f.landmarks[4, 0] for f in faces)


def test_no_face_in_faceless_pictures(
    backend: tuple[str, FaceDetector], faceless_photo: np.ndarray, portrait: np.ndarray
) -> None:
    detector = backend[1]
    assert detector.detect(faceless_photo) == []
    gradient = np.repeat(np.linspace(0, 255, 320, dtype=np.float32)[None, :], 240, axis=0)
    assert detector.detect(np.dstack([gradient] * 3).astype(np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    prepared = prepare_faces([noise, portrait], detector, on_no_face="skip")
    assert prepared.skipped == [0] and prepared.kept == [1]


@pytest.mark.parametrize("which", [0, 5])
def test_alignment_same_at_any_position_and_scale(
    backend: tuple[str, FaceDetector], group_photo: np.ndarray, group_faces: list[DetectedFace], which: int
) -> None:
    detector = backend[1]
    patch = _patch(group_photo, sort_left_to_right(group_faces)[which], 1.2)
    crops, points = [], []
    for scale, (ox, oy) in [
        (1.0, (0, 0)),
        (1.0, (301, 53)),
        (0.7, (37, 111)),
        (1.6, (120, 9)),
        (1.6, (5, 290)),
    ]:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        pasted = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=interpolation)
        canvas = np.full((800, 900, 3), 90, np.uint8)
        canvas[oy : oy + pasted.shape[0], ox : ox + pasted.shape[1]] = pasted
        faces = detector.detect(canvas)
        assert len(faces) == 1
        crops.append(align_face(canvas, faces[0].landmarks).astype(np.float32))
        points.append((faces[0].landmarks - np.array([ox, oy], np.float32)) / scale)
    gray_levels = [float(np.abs(c - crops[0]).mean()) for c in crops[1:]]
    pixels = [float(np.linalg.norm(p - points[0], axis=1).mean()) for p in points[1:]]
    assert max(gray_levels) < 7.0, gray_levels
    assert max(pixels) < 1.5, pixels


def test_tight_crop_found_on_padded_canvas(
    backend: tuple[str, FaceDetector], group_photo: np.ndarray, group_faces: list[DetectedFace]
) -> None:
    tight = _patch(group_photo, sort_left_to_right(group_faces)[5], 0.42)
    faces = backend[1].detect(tight)
    assert len(faces) == 1
    height, width = tight.shape[:2]
    x1, y1, x2, y2 = faces[0].box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert _arcface_order(faces[0])
