"""The "pre-aligned" backend: the input already is an aligned face crop, so it is only resized."""

from __future__ import annotations

import numpy as np

from uniid_core.face.align import ALIGNED_SIZE, ARCFACE_TEMPLATE, resize_aligned
from uniid_core.face.detect import DetectedFace


class PreAlignedDetector:
    """Treat the whole image as one aligned face: 112x112 resize, landmarks = the ArcFace template."""

    name = "pre-aligned"

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """Return one face covering the whole image, with its ready 112x112 crop attached."""
        height, width = image_rgb.shape[:2]
        scale = np.array([width / ALIGNED_SIZE, height / ALIGNED_SIZE], dtype=np.float32)
        return [
            DetectedFace(
                box=(0.0, 0.0, float(width), float(height)),
                landmarks=ARCFACE_TEMPLATE * scale,
                score=1.0,
                gender=None,
                aligned=resize_aligned(image_rgb),
            )
        ]
