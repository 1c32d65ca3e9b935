"""MTCNN specifics: large photos, the OpenCV engine and configuration errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from uniid_core.errors import FaceDetectionError
from uniid_core.face.detect import DetectedFace, sort_left_to_right
from uniid_core.face.mtcnn import MTCNNDetector, find_model_dir


def test_large_photo_is_detected_downscaled_and_mapped_back(
    mtcnn: MTCNNDetector, group_photo: np.ndarray, group_faces: list[DetectedFace]
) -> None:
    big = cv2.resize(group_photo, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    faces = sort_left_to_right(mtcnn.detect(big))
    assert len(faces) == 6
    for small, large in zip(sort_left_to_right(group_faces), faces, strict=True):
        assert np.abs(np.asarray(large.box) / 2 - np.asarray(small.box)).max() < 8
        assert np.abs(large.landmarks / 2 - small.landmarks).max() < 4


def test_opencv_engine_agrees(group_photo: np.ndarray, group_faces: list[DetectedFace]) -> None:
    faces = MTCNNDetector(engine="opencv").detect(group_photo)
    assert len(faces) >= 6
    for face in group_faces:
        dist = [np.abs(f.landmarks - face.landmarks).mean() for f in faces]
        assert min(dist) < 5.0


def test_configuration_errors(tmp_path: Path) -> None:
    assert (find_model_dir() / "pnet.onnx").is_file()
    with pytest.raises(FaceDetectionError, match="MTCNN model file missing"):
        MTCNNDetector(model_dir=tmp_path)
    with pytest.raises(FaceDetectionError, match="unknown MTCNN engine"):
        MTCNNDetector(engine="tensorflow")
    with pytest.raises(FaceDetectionError, match="min_face_size"):
        MTCNNDetector(min_face_size=5)


def test_shipped_quickstart_photo_gives_one_aligned_face(mtcnn: MTCNNDetector) -> None:
    """The public-domain photo the quickstart uses: one face, found and aligned to the ArcFace crop."""
    from uniid_core.face.image import load_image
    from uniid_core.face.references import prepare_faces

    photo = Path(__file__).resolve().parents[2] / "scripts" / "assets" / "eileen_collins.jpg"
    assert photo.stat().st_size < 100_000 and (photo.parent / "SOURCE.md").is_file()
    faces = prepare_faces([load_image(photo)], mtcnn)
    (face,) = faces.faces
    assert face.score > 0.99
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < mouth_left[1]
    assert faces.aligned.shape == (1, 112, 112, 3) and faces.aligned.std() > 20
