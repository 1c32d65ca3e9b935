"""prepare_faces: selection, skip-or-error, several references, class word, pre-aligned input, previews."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from uniid_core.errors import FaceDetectionError, NoFaceError
from uniid_core.face.align import ARCFACE_TEMPLATE
from uniid_core.face.detect import DetectedFace, make_detector, sort_left_to_right
from uniid_core.face.preview import aligned_preview, draw_detections
from uniid_core.face.references import PreparedFaces, prepare_faces, select_face


def _face(x: float, size: float, score: float = 0.99, gender: str | None = None) -> DetectedFace:
    landmarks = ARCFACE_TEMPLATE * (size / 112) + np.array([x, 50.0], np.float32)
    return DetectedFace((x, 50.0, x + size, 50.0 + size), landmarks, score, gender)


class FakeDetector:
    """Returns preset faces per call, to test selection and class-word logic without a network."""

    name = "fake"

    def __init__(self, per_image: list[list[DetectedFace]]) -> None:
        self.per_image = list(per_image)

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        return self.per_image.pop(0)


def _canvas() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)


def test_selection_rules_on_synthetic_faces() -> None:
    faces = [_face(300, 60, 0.95), _face(10, 40, 0.999), _face(150, 90, 0.90)]
    assert select_face(faces, "largest")[1] is faces[2]
    assert select_face(faces, "score")[1] is faces[1]
    assert select_face(faces, 0) == (0, faces[1])
    assert select_face(faces, "1")[1] is faces[2]
    assert select_face(faces, -1) == (2, faces[0])
    with pytest.raises(NoFaceError, match="only 3 face"):
        select_face(faces, 3)
    with pytest.raises(FaceDetectionError, match="unknown face selection"):
        select_face(faces, "biggest")


def test_group_photo_selection(mtcnn, group_photo: np.ndarray, group_faces: list[DetectedFace]) -> None:
    ordered = sort_left_to_right(group_faces)
    centres = [(f.box[0] + f.box[2]) / 2 for f in ordered]
    assert centres == sorted(centres)
    for index in range(len(ordered)):
        prepared = prepare_faces([group_photo], FakeDetector([list(group_faces)]), select=index)
        assert prepared.reports[0].selected == index
        assert prepared.faces[0] is ordered[index]
    largest = select_face(group_faces, "largest")[1]
    assert largest.area == max(f.area for f in group_faces)
    best = select_face(group_faces, "score")[1]
    assert best.score == max(f.score for f in group_faces)


def test_largest_face_wins_when_one_is_clearly_bigger(
    mtcnn, group_photo: np.ndarray, group_faces: list[DetectedFace]
) -> None:
    ordered = sort_left_to_right(group_faces)
    canvas = np.full((500, 800, 3), 100, np.uint8)
    patches = []
    for face, scale in ((ordered[1], 0.8), (ordered[5], 1.8)):
        x1, y1, x2, y2 = (int(v) for v in face.box)
        patch = group_photo[max(0, y1 - 30) : y2 + 30, max(0, x1 - 30) : x2 + 30]
        patches.append(cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC))
    canvas[20 : 20 + patches[0].shape[0], 20 : 20 + patches[0].shape[1]] = patches[0]
    canvas[40 : 40 + patches[1].shape[0], 400 : 400 + patches[1].shape[1]] = patches[1]
    prepared = prepare_faces([canvas], mtcnn, select="largest")
    assert prepared.reports[0].num_faces == 2
    assert prepared.faces[0].box[0] > 400 and prepared.reports[0].selected == 1
    assert prepare_faces([canvas], mtcnn, select=0).faces[0].box[0] < 400


def test_several_references_with_skip(mtcnn, portrait, group_photo, faceless_photo) -> None:
    tiny = np.zeros((20, 20, 3), np.uint8)
    prepared = prepare_faces([portrait, faceless_photo, group_photo, tiny], mtcnn, on_no_face="skip")
    assert isinstance(prepared, PreparedFaces)
    assert prepared.kept == [0, 2] and prepared.skipped == [1, 3]
    assert prepared.aligned.shape == (2, 112, 112, 3) and prepared.aligned.dtype == np.uint8
    assert tuple(prepared.tensor.shape) == (2, 3, 112, 112)
    assert float(prepared.tensor.min()) >= -1.0 and float(prepared.tensor.max()) <= 1.0
    assert prepared.class_word == "person"
    report = prepared.reports[1]
    assert (
        report.status == "skipped"
        and report.num_faces == 0
        and report.message.startswith("image 1: no face found")
    )
    assert "at least 32 px" in prepared.reports[3].message
    assert prepared.reports[2].num_faces == 6 and len(prepared.reports[2].all_faces) == 6
    preview = prepared.preview()
    assert preview.shape == (2, 112, 112, 3) and preview.dtype == np.float32 and preview.max() <= 1.0
    summary = prepared.summary()
    assert (
        "2 of 4 images used" in summary
        and "image 2: face " in summary
        and "skipped image 1: no face" in summary
    )


def test_no_face_error_names_image_and_remedies(mtcnn, portrait, faceless_photo) -> None:
    with pytest.raises(NoFaceError) as info:
        prepare_faces([portrait, faceless_photo], mtcnn)
    text = str(info.value)
    assert (
        text.startswith("image 1: no face found")
        and "detection size" in text
        and "closer" in text
        and "skip" in text
    )
    with pytest.raises(FaceDetectionError, match="image 1: .*at least 32 px"):
        prepare_faces([portrait, np.zeros((8, 8), np.uint8)], mtcnn)


def test_all_images_without_face_raise_even_when_skipping(mtcnn, faceless_photo) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="none of the 2 reference images"):
        prepare_faces([faceless_photo, noise], mtcnn, on_no_face="skip")


def test_index_out_of_range_is_skipped_or_raised() -> None:
    faces = [[_face(10, 50)], [_face(10, 50), _face(200, 50)]]
    prepared = prepare_faces([_canvas(), _canvas()], FakeDetector(faces), select=1, on_no_face="skip")
    assert prepared.kept == [1] and "only 1 face" in prepared.reports[0].message
    with pytest.raises(NoFaceError, match="image 0: face index 1"):
        prepare_faces([_canvas()], FakeDetector([[_face(10, 50)]]), select=1)


def test_class_word_from_majority_gender() -> None:
    def run(genders: list[str | None], **kwargs: object) -> str:
        faces = [[_face(10, 60, gender=g)] for g in genders]
        return prepare_faces([_canvas()] * len(genders), FakeDetector(faces), **kwargs).class_word

    assert run(["man", "woman", "man"]) == "man"
    assert run(["woman"]) == "woman"
    assert run(["man", "woman"]) == "person"
    assert run([None, None], fallback_class_word="child") == "child"
    assert run(["man"], class_word="boy") == "boy"
    assert run(["man"], class_word="auto") == "man"


def test_pre_aligned_backend(portrait: np.ndarray) -> None:
    prepared = prepare_faces([portrait], "pre-aligned")
    assert np.array_equal(prepared.aligned[0], portrait)
    big = cv2.resize(portrait, (224, 224), interpolation=cv2.INTER_CUBIC)
    prepared = prepare_faces([big], make_detector("pre_aligned"))
    assert float(np.abs(prepared.aligned[0].astype(np.float32) - portrait).mean()) < 3.0
    assert prepared.faces[0].landmarks.shape == (5, 2)


def test_batch_tensor_input_and_bad_options(portrait: np.ndarray) -> None:
    batch = np.stack([portrait, portrait]).astype(np.float32) / 255.0
    prepared = prepare_faces(batch, "pre-aligned")
    assert prepared.aligned.shape == (2, 112, 112, 3)
    assert np.array_equal(prepared.aligned[1], portrait)
    with pytest.raises(FaceDetectionError, match="unknown face selection"):
        prepare_faces([portrait], "pre-aligned", select="biggest", on_no_face="skip")
    with pytest.raises(FaceDetectionError, match="on_no_face"):
        prepare_faces([portrait], "pre-aligned", on_no_face="ignore")
    with pytest.raises(FaceDetectionError, match="no reference images"):
        prepare_faces([], "pre-aligned")
    with pytest.raises(FaceDetectionError, match="unknown face detector backend"):
        prepare_faces([portrait], "dlib")


def test_previews(group_photo: np.ndarray, group_faces: list[DetectedFace]) -> None:
    assert aligned_preview([]).shape == (0, 112, 112, 3)
    drawn = draw_detections(group_photo, sort_left_to_right(group_faces), selected=2)
    assert drawn.shape == group_photo.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, group_photo)
    x1, y1 = (int(round(v)) for v in sort_left_to_right(group_faces)[2].box[:2])
    assert drawn[y1, x1 + 5].tolist() == [0, 200, 0]


def test_gray_rgba_16_bit_and_float_photos_are_detected(mtcnn, group_photo: np.ndarray) -> None:
    gray = group_photo.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([group_photo, np.full(group_photo.shape[:2], 255, np.uint8)])
    deep = group_photo.astype(np.uint16) * 257
    unit = group_photo.astype(np.float32) / 255.0
    prepared = prepare_faces([gray, rgba, deep, unit], mtcnn)
    assert [r.num_faces for r in prepared.reports] == [6, 6, 6, 6]
    assert np.array_equal(prepared.aligned[1], prepared.aligned[2])
    assert np.array_equal(prepared.aligned[2], prepared.aligned[3])
