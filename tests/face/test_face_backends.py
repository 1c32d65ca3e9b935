"""Backends: insightface folder mistakes, providers, lazy imports, and real insightface when models exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uniid_core.errors import FaceDetectionError
from uniid_core.face.detect import DetectedFace, FaceDetector, make_detector
from uniid_core.face.insightface_backend import (
    DEFAULT_DET_SIZE,
    InsightFaceDetector,
    _det_sizes,
    check_model_folder,
    find_model_pack,
)
from uniid_core.face.providers import PROVIDERS, available_providers, resolve_providers

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pack(
    folder: Path, files: tuple[str, ...] = ("det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b"onnx")
    return folder


def test_good_layout_is_accepted(tmp_path: Path) -> None:
    folder = _pack(tmp_path / "models" / "buffalo_l")
    assert check_model_folder(tmp_path, "buffalo_l") == folder
    assert check_model_folder(tmp_path / "models", "buffalo_l") == folder
    antelope = _pack(tmp_path / "models" / "antelopev2", ("scrfd_10g_bnkps.onnx", "genderage.onnx"))
    assert check_model_folder(tmp_path, "antelopev2") == antelope


def test_nested_one_level_too_deep(tmp_path: Path) -> None:
    _pack(tmp_path / "models" / "antelopev2" / "antelopev2", ("scrfd_10g_bnkps.onnx",))
    with pytest.raises(FaceDetectionError) as info:
        check_model_folder(tmp_path, "antelopev2")
    text = str(info.value)
    assert "nested one level too deep" in text
    assert str(tmp_path / "models" / "antelopev2" / "antelopev2") in text
    assert str(tmp_path / "models" / "antelopev2" / "scrfd_10g_bnkps.onnx") in text


def test_zip_not_unpacked(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "antelopev2.zip").write_bytes(b"PK")
    with pytest.raises(FaceDetectionError, match="not unpacked") as info:
        check_model_folder(tmp_path, "antelopev2")
    assert str(tmp_path / "models" / "antelopev2.zip") in str(info.value)
    assert str(tmp_path / "models" / "antelopev2") in str(info.value)


def test_missing_and_incomplete_packs(tmp_path: Path) -> None:
    with pytest.raises(FaceDetectionError, match="model folder not found") as info:
        check_model_folder(tmp_path, "buffalo_l")
    assert str(tmp_path / "models" / "buffalo_l") in str(info.value)
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(FaceDetectionError, match="holds no .onnx"):
        check_model_folder(tmp_path, "buffalo_l")
    _pack(tmp_path / "models" / "buffalo_l", ("w600k_r50.onnx", "genderage.onnx"))
    with pytest.raises(FaceDetectionError, match="incomplete: missing det_10g.onnx ") as info:
        check_model_folder(tmp_path, "buffalo_l")
    assert "w600k_r50.onnx" in str(info.value)


def test_incomplete_pack_lists_every_missing_and_empty_file(tmp_path: Path) -> None:
    folder = _pack(tmp_path / "models" / "buffalo_l", ("w600k_r50.onnx",))
    (folder / "1k3d68.onnx").write_bytes(b"")
    with pytest.raises(FaceDetectionError) as info:
        check_model_folder(tmp_path, "buffalo_l")
    text = str(info.value)
    assert "missing det_10g.onnx, genderage.onnx; empty (0 bytes" in text and "1k3d68.onnx" in text
    assert str(folder) in text
    _pack(folder, ("det_10g.onnx",))
    with pytest.raises(FaceDetectionError, match="missing genderage.onnx; empty"):
        check_model_folder(tmp_path, "buffalo_l")
    other = _pack(tmp_path / "models" / "buffalo_s", ("det_500m.onnx",))
    with pytest.raises(FaceDetectionError, match="missing genderage.onnx"):
        check_model_folder(tmp_path, "buffalo_s")
    _pack(other, ("genderage.onnx",))
    assert check_model_folder(tmp_path, "buffalo_s") == other


def test_pack_search_names_every_folder(tmp_path: Path) -> None:
    roots = [tmp_path / "comfy" / "insightface", tmp_path / "extra" / "insightface"]
    with pytest.raises(FaceDetectionError) as info:
        find_model_pack(roots, "buffalo_l")
    for root in roots:
        assert str(root / "models" / "buffalo_l") in str(info.value)
    found = _pack(roots[1] / "models" / "buffalo_l")
    assert find_model_pack(roots, "buffalo_l") == found
    _pack(roots[0] / "models" / "buffalo_l" / "buffalo_l")
    with pytest.raises(FaceDetectionError, match="nested one level too deep"):
        find_model_pack(roots, "buffalo_l")


def test_pack_outside_models_subfolder(tmp_path: Path) -> None:
    _pack(tmp_path / "buffalo_l")
    with pytest.raises(FaceDetectionError, match="must be in") as info:
        check_model_folder(tmp_path, "buffalo_l")
    assert str(tmp_path / "models" / "buffalo_l") in str(info.value)


def test_providers() -> None:
    assert resolve_providers("CPU") == ["CPUExecutionProvider"]
    assert resolve_providers("cpuexecutionprovider") == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in available_providers() and list(PROVIDERS)[0] == "CPU"
    with pytest.raises(FaceDetectionError, match="unknown execution provider"):
        resolve_providers("TPU")
    present = set(available_providers())
    for name in ("CUDA", "DirectML", "ROCm", "CoreML", "MIGraphX"):
        if PROVIDERS[next(k for k in PROVIDERS if k.lower() == name.lower())] in present:
            assert resolve_providers(name)[-1] == "CPUExecutionProvider"
            continue
        with pytest.raises(FaceDetectionError, match="not available in this onnxruntime") as info:
            resolve_providers(name)
        assert "available: " in str(info.value) and "choose CPU" in str(info.value)


def test_det_size_ladder() -> None:
    assert DEFAULT_DET_SIZE == 320, "the official insightface detection size"
    assert _det_sizes(320) == [320, 384, 512, 640, 256]
    assert _det_sizes(640) == [640, 512, 384, 320, 256]
    assert _det_sizes(448) == [448, 512, 640, 384, 320, 256]
    assert _det_sizes([480, 224]) == [480, 224]
    with pytest.raises(FaceDetectionError, match="multiple of 32"):
        _det_sizes(300)


def test_insightface_errors_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FaceDetectionError, match="model pack 'antelopev2' not found; searched"):
        make_detector("insightface", root=tmp_path, name="antelopev2")
    _pack(tmp_path / "models" / "buffalo_l")
    with pytest.raises(FaceDetectionError, match="unknown execution provider"):
        InsightFaceDetector(root=tmp_path, provider="abacus")
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(FaceDetectionError, match="pip install insightface"):
        InsightFaceDetector(root=tmp_path)


def test_broken_model_files_give_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("insightface", reason="needs the insightface package to load model files")
    _pack(tmp_path / "models" / "buffalo_l")
    with pytest.raises(FaceDetectionError, match=str(tmp_path / "models" / "buffalo_l")):
        InsightFaceDetector(root=tmp_path)


def test_light_import_and_mtcnn_without_onnxruntime_or_insightface(sample_images: Path) -> None:
    script = f"""
import sys
import uniid_core.face as face
heavy = [m for m in ("cv2", "torch", "onnxruntime", "insightface") if m in sys.modules]
assert not heavy, heavy
sys.modules["onnxruntime"] = None
sys.modules["insightface"] = None
from uniid_core.errors import FaceDetectionError
det = face.make_detector("mtcnn")
assert det.engine == "opencv", det.engine
faces = det.detect(face.load_image({str(sample_images / "t1.jpg")!r}))
assert len(faces) >= 6, len(faces)
try:
    face.resolve_providers("CPU")
except FaceDetectionError as exc:
    assert "mtcnn" in str(exc)
else:
    raise AssertionError("no error without onnxruntime")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_protocol_and_factory() -> None:
    assert isinstance(make_detector("pre-aligned"), FaceDetector)
    assert isinstance(make_detector("MTCNN"), FaceDetector)


def _inside(face: DetectedFace) -> bool:
    x1, y1, x2, y2 = face.box
    return bool(((face.landmarks >= [x1, y1]) & (face.landmarks <= [x2, y2])).all())


def test_insightface_wrapper_runs_face_analysis(fake_insightface_root: Path) -> None:
    detector = make_detector("insightface", root=fake_insightface_root, name="buffalo_l")
    assert detector.det_sizes[0] == 320, "the official det size is the default"
    image = np.zeros((320, 320, 3), np.uint8)
    image[48:144, 160:256] = (255, 0, 0)
    image[200:296, 20:116] = (0, 0, 255)
    faces = detector.detect(image)
    assert faces and all(isinstance(f, DetectedFace) for f in faces)
    for face in faces:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        assert 160 <= cx <= 256 and 48 <= cy <= 144, "detections must sit on the red square (RGB order kept)"
        assert face.gender == "man" and 0.5 < face.score <= 1.0
        assert face.landmarks.shape == (5, 2) and face.landmarks[0, 0] < face.landmarks[1, 0]
        assert _inside(face)
    blue_only = np.zeros((320, 320, 3), np.uint8)
    blue_only[100:200, 100:200] = (0, 0, 255)
    assert detector.detect(blue_only) == []
    assert detector._prepared == 256, "the det_size ladder must be walked to its last rung"
    assert detector.active_providers == ["CPUExecutionProvider"]


def test_genderage_file_that_is_no_gender_model(fake_insightface_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    detection = (fake_insightface_root / "models" / "buffalo_l" / "det_10g.onnx").read_bytes()
    (folder / "det_10g.onnx").write_bytes(detection)
    (folder / "genderage.onnx").write_bytes(detection)
    with pytest.raises(FaceDetectionError, match="did not load a gender model") as info:
        InsightFaceDetector(root=tmp_path, name="buffalo_l")
    assert str(folder) in str(info.value)


def test_backend_registry_lists_builds_and_explains_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new backend is a class plus one registration; shared settings reach only backends that take them."""
    from uniid_core.face import detect

    monkeypatch.setattr(detect, "_BACKENDS", dict(detect._BACKENDS))
    assert detect.face_backend_names() == ["insightface", "mtcnn", "pre-aligned"]
    received = {}

    class Fixed:
        def __init__(self, det_size: int = 0, scale: float = 1.0) -> None:
            received.update(det_size=det_size, scale=scale)

        def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
            return []

    detect.register_face_backend(detect.FaceBackend("fixed", Fixed, settings=("det_size",)))
    assert detect.face_backend_names()[-1] == "fixed"
    shared = {"root": "/nowhere", "name": "x", "provider": "CPU", "det_size": 320, "threads": None}
    built = make_detector("Fixed", **shared, scale=2.0)
    assert isinstance(built, FaceDetector) and received == {"det_size": 320, "scale": 2.0}
    detect.register_face_backend(
        detect.FaceBackend("needs-absent", "uniid_absent_package_for_test:Detector",
                           requires=("uniid_absent_package_for_test",), install="pip install it")
    )
    with pytest.raises(FaceDetectionError, match="needs uniid_absent_package_for_test.*pip install it"):
        make_detector("needs_absent")
    with pytest.raises(FaceDetectionError, match="backend 'dlib'; choose one of insightface, mtcnn"):
        make_detector("dlib")
