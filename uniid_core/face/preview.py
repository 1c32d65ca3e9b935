"""Images for people: aligned crops as a ComfyUI IMAGE batch, and detections drawn on the photo."""

from __future__ import annotations

import cv2
import numpy as np

from uniid_core.face.align import stack_aligned
from uniid_core.face.detect import DetectedFace

LANDMARK_COLORS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))
"""RGB colours of left eye, right eye, nose, left and right mouth corner."""


def aligned_preview(aligned: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Aligned uint8 crops -> float32 (R,112,112,3) in [0, 1], the layout of a ComfyUI IMAGE batch."""
    return stack_aligned(aligned).astype(np.float32) / 255.0


def draw_detections(
    image_rgb: np.ndarray, faces: list[DetectedFace], selected: int | None = None
) -> np.ndarray:
    """Copy of the image with boxes (the selected one green, others gray) and the 5 landmarks drawn."""
    canvas = np.ascontiguousarray(image_rgb.copy())
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (round(v) for v in face.box)
        color = (0, 200, 0) if i == selected else (160, 160, 160)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        for (x, y), dot in zip(face.landmarks, LANDMARK_COLORS, strict=True):
            cv2.circle(canvas, (round(float(x)), round(float(y))), thickness + 1, dot, -1)
    return canvas
