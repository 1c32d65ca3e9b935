"""The detector interface shared by all backends, and the factory that builds one by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from uniid_core.errors import FaceDetectionError

BACKENDS = ("insightface", "mtcnn", "pre-aligned")


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


def detect_on_padded_canvas(
    detect: Callable[[np.ndarray], list[DetectedFace]], image_rgb: np.ndarray
) -> list[DetectedFace]:
    """Run a detector on the image centred on a black canvas 5/3 its size, for crops too tight to detect."""
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


def make_detector(backend: str, **options: Any) -> FaceDetector:
    """Build a detector: "insightface" (root=, name=, provider=, det_size=), "mtcnn" or "pre-aligned"."""
    key = backend.strip().lower().replace("_", "-")
    if key == "insightface":
        from uniid_core.face.insightface_backend import InsightFaceDetector

        return InsightFaceDetector(**options)
    if key == "mtcnn":
        from uniid_core.face.mtcnn import MTCNNDetector

        return MTCNNDetector(**options)
    if key in ("pre-aligned", "prealigned", "aligned"):
        from uniid_core.face.prealigned import PreAlignedDetector

        return PreAlignedDetector(**options)
    raise FaceDetectionError(
        f"unknown face detector backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    )
