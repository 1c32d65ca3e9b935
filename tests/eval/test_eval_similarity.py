"""Identity similarity on real photos with MTCNN and random-weight nets: self = 1, others lower, no face
reported, references from photos, embeddings or an identity, and insightface's ONNX recognition path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.core.conftest import TINY_CONFIG, randomize
from tests.eval.conftest import write_arcface_onnx
from uniid_core.errors import FaceDetectionError, NoFaceError, UniIDError
from uniid_core.face.recognition import FaceNetEmbedder, OnnxFaceEmbedder, find_recognition_model
from uniid_core.face.references import prepare_faces
from uniid_core.identity import Identity, encode_identity, load_identity, save_identity
from uniid_core.models import UniIDModel
from uniid_core.similarity import Reference, find_faces, score_faces, score_images

FLAT = np.full((120, 120, 3), 128, np.uint8)
"""A gray image: no face."""


@pytest.fixture(scope="module")
def embedder(small_face_net) -> FaceNetEmbedder:
    return FaceNetEmbedder(small_face_net, batch_size=2)


def test_image_scored_against_itself_is_one_in_any_pixel_format(eileen, mtcnn, embedder) -> None:
    reference = Reference.from_photos([eileen], embedder, mtcnn)
    as_float = torch.from_numpy(eileen).float().div(255.0)[None]  # a ComfyUI IMAGE batch of one
    report = score_images([eileen, as_float[0]], reference, embedder, mtcnn)
    assert [s.num_faces for s in report.scores] == [1, 1]
    assert report.scores[0].score == pytest.approx(1.0, abs=1e-5)
    assert report.scores[1].score == pytest.approx(1.0, abs=1e-5)
    assert score_images(as_float, reference, embedder, mtcnn).values == pytest.approx([1.0], abs=1e-5)
    assert (reference.num_faces, reference.kind, reference.notes) == (1, embedder.kind, [])


def test_different_faces_score_lower_and_rank_last(eileen, group_photo, mtcnn, embedder) -> None:
    reference = Reference.from_photos([eileen], embedder, mtcnn)
    mirrored = np.ascontiguousarray(eileen[:, ::-1])
    report = score_images([group_photo, mirrored, eileen], reference, embedder, mtcnn)
    other, mirror, same = report.values
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < 0.95 and mirror < 0.99 and other < same and mirror < same
    assert report.scores[0].num_faces >= 6 and report.scores[0].box is not None
    assert report.order[0] == 2 and report.best == 2
    assert report.order == sorted(range(3), key=lambda i: -report.values[i])
    assert report.mean == pytest.approx(np.mean(report.values))


def test_image_without_a_face_is_reported_and_does_not_stop_the_run(eileen, mtcnn, embedder) -> None:
    reference = Reference.from_photos([eileen], embedder, mtcnn)
    tiny = np.zeros((16, 16, 3), np.uint8)
    report = score_images([FLAT, eileen, tiny], reference, embedder, mtcnn)
    flat, ok, small = report.scores
    assert flat.score is None and flat.reason == "no face found (detector: mtcnn)"
    assert small.score is None and "16x16 pixels" in small.reason
    assert ok.score == pytest.approx(1.0, abs=1e-5) and ok.reason == ""
    assert math.isnan(report.values[0]) and math.isnan(report.values[2])
    assert report.order == [1, 0, 2] and report.best == 1
    assert report.detection_rate == pytest.approx(1 / 3)
    lines = report.table().splitlines()
    assert lines[2].split() == ["1", "1", "1.0000", "1"]
    assert lines[3].split()[:4] == ["-", "0", "-", "0"] and lines[3].endswith(
        "no face found (detector: mtcnn)"
    )
    assert lines[-1].startswith("1 of 3 image(s) with a face; mean 1.0000; best: image 1")
    nothing = score_images([FLAT, FLAT], reference, embedder, mtcnn)
    assert nothing.best is None and nothing.mean is None and nothing.order == [0, 1]
    assert nothing.table().splitlines()[-1] == "0 of 2 image(s) with a face"


def test_face_selection_and_progress_callback(eileen, group_photo, mtcnn, embedder) -> None:
    reference = Reference.from_photos([eileen], embedder, mtcnn)
    calls = []
    report = score_images(
        [eileen, group_photo], reference, embedder, mtcnn, select=3, on_image=lambda: calls.append(1)
    )
    assert len(calls) == 2
    assert (
        report.scores[0].score is None
        and "face index 3 asked but only 1 face(s) found" in report.scores[0].reason
    )
    leftmost = score_images([group_photo], reference, embedder, mtcnn, select=0).scores[0]
    assert report.scores[1].score is not None and report.scores[1].box[0] > leftmost.box[0]
    with pytest.raises(FaceDetectionError, match="unknown face selection"):
        score_images([eileen], reference, embedder, mtcnn, select="biggest")


def test_reference_photos_are_averaged_and_faceless_ones_noted(eileen, group_photo, mtcnn, embedder) -> None:
    mirrored = np.ascontiguousarray(eileen[:, ::-1])
    reference = Reference.from_photos([eileen, FLAT, mirrored], embedder, mtcnn)
    assert reference.num_faces == 2 and reference.source == "2 of 3 reference photo(s)"
    assert len(reference.notes) == 1 and reference.notes[0].startswith("image 1: no face found")
    crops = prepare_faces([eileen, mirrored], mtcnn).aligned
    units = embedder.embed(crops).astype(np.float64)
    expected = units.mean(axis=0) / np.linalg.norm(units.mean(axis=0))
    np.testing.assert_allclose(reference.embedding, expected, atol=1e-6)
    assert np.linalg.norm(reference.embedding) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(NoFaceError, match="none of the 2 reference images"):
        Reference.from_photos([FLAT, FLAT], embedder, mtcnn)


def test_reference_from_embeddings() -> None:
    reference = Reference.from_embeddings(torch.tensor([[3.0, 0.0], [0.0, 0.5]]), kind="test")
    np.testing.assert_allclose(reference.embedding, [2**-0.5, 2**-0.5], atol=1e-7)
    assert reference.num_faces == 2 and reference.kind == "test"
    single = Reference.from_embeddings(np.array([0.0, -2.0]), kind="test")
    np.testing.assert_allclose(single.embedding, [0.0, -1.0])
    for bad, message in (
        ([[1.0, 0.0], [0.0, 0.0]], "all-zero"),
        ([[np.nan, 1.0]], "NaN"),
        ([[1.0, 0.0], [-1.0, 0.0]], "cancel out"),
        (np.zeros((2, 2, 2)), r"\(D,\) or \(R, D\)"),
    ):
        with pytest.raises(UniIDError, match=message):
            Reference.from_embeddings(bad, kind="test")


def test_identity_carries_the_face_embedding_and_old_files_still_load(
    eileen, mtcnn, small_face_net, embedder, tmp_path: Path
) -> None:
    model = randomize(UniIDModel(TINY_CONFIG), seed=1).eval()
    faces = prepare_faces([eileen, np.ascontiguousarray(eileen[:, ::-1])], mtcnn)
    identity = encode_identity(model, small_face_net, faces.tensor)
    assert identity.face_embedding.shape == (1, 512) and identity.face_embedding.dtype == torch.float32
    expected = Reference.from_embeddings(embedder.embed(faces.aligned)).embedding
    np.testing.assert_allclose(identity.face_embedding[0].numpy(), expected, atol=1e-6)
    loaded = load_identity(save_identity(identity, tmp_path / "me.safetensors"))
    assert torch.equal(loaded.face_embedding, identity.face_embedding)
    reference = Reference.from_identity(loaded)
    assert reference.source == "identity (2 reference photo(s))"
    report = score_images([faces.aligned[0]], reference, embedder, "pre-aligned")
    assert report.values[0] == pytest.approx(float(expected @ embedder.embed(faces.aligned[:1])[0]), abs=1e-5)
    old = load_identity(save_identity(Identity(adapter_tokens=identity.adapter_tokens), tmp_path / "old.st"))
    assert old.face_embedding is None and torch.equal(old.adapter_tokens, identity.adapter_tokens)
    with pytest.raises(UniIDError, match="carries no face embedding"):
        Reference.from_identity(old)


def test_onnx_recognition_model_scores(eileen, group_photo, mtcnn, arcface_pack: Path) -> None:
    embedder = OnnxFaceEmbedder(arcface_pack)
    assert embedder.path == arcface_pack / "w600k_r50.onnx" and not embedder.raw_pixels
    assert embedder.name == "insightface buffalo_l/w600k_r50.onnx" and embedder.kind == "onnx:w600k_r50.onnx"
    reference = Reference.from_photos([eileen], embedder, mtcnn)
    report = score_images([eileen, group_photo, FLAT], reference, embedder, mtcnn)
    assert report.values[0] == pytest.approx(1.0, abs=1e-5) and report.values[1] < 0.95
    assert report.scores[2].score is None and report.order == [0, 1, 2]


def test_onnx_embedding_is_insightface_arcface_embedding(
    eileen, group_photo, mtcnn, arcface_pack: Path, tmp_path: Path
) -> None:
    pytest.importorskip("insightface", reason="needs insightface to compare with its ArcFaceONNX")
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    aligned = np.stack([c.aligned for c in find_faces([eileen, group_photo], mtcnn)])
    self_normalizing = OnnxFaceEmbedder(write_arcface_onnx(tmp_path / "r100.onnx", normalizes_itself=True))
    assert self_normalizing.raw_pixels
    for model in (OnnxFaceEmbedder(arcface_pack), self_normalizing):
        theirs = ArcFaceONNX(model_file=str(model.path)).get_feat([c[..., ::-1] for c in aligned])
        theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
        np.testing.assert_allclose(model.embed(aligned), theirs, atol=1e-5)
    one_at_a_time = OnnxFaceEmbedder(write_arcface_onnx(tmp_path / "fixed.onnx", batch=1), batch_size=8)
    assert one_at_a_time.batch_size == 1
    np.testing.assert_allclose(
        one_at_a_time.embed(aligned), OnnxFaceEmbedder(arcface_pack).embed(aligned), atol=1e-6
    )


def test_nets_of_different_kinds_are_never_compared(eileen, mtcnn, embedder, arcface_pack: Path) -> None:
    onnx = OnnxFaceEmbedder(arcface_pack / "w600k_r50.onnx")
    reference = Reference.from_photos([eileen], embedder, mtcnn)
    crops = find_faces([eileen], mtcnn)
    with pytest.raises(UniIDError, match="embedded by another net"):
        score_faces(crops, reference, onnx)
    widened = Reference.from_embeddings(np.ones(8), kind=embedder.kind)
    with pytest.raises(UniIDError, match="makes 512-d embeddings but the reference has 8"):
        score_faces(crops, widened, embedder)


def test_recognition_model_errors(arcface_pack: Path, tmp_path: Path) -> None:
    with pytest.raises(FaceDetectionError, match="not an ArcFace recognition model"):
        OnnxFaceEmbedder(arcface_pack / "det_10g.onnx")
    (tmp_path / "only_det").mkdir()
    (tmp_path / "only_det" / "det_10g.onnx").write_bytes((arcface_pack / "det_10g.onnx").read_bytes())
    with pytest.raises(FaceDetectionError, match=r"found det_10g\.onnx\); give the recognition"):
        find_recognition_model(tmp_path / "only_det")
    with pytest.raises(FaceDetectionError, match="face-recognition model not found"):
        find_recognition_model(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(FaceDetectionError, match="empty"):
        OnnxFaceEmbedder(tmp_path / "empty.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(FaceDetectionError, match="could not load"):
        OnnxFaceEmbedder(tmp_path / "broken.onnx")
