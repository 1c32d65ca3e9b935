"""Five-point similarity alignment to the ArcFace 112x112 template and the official [-1, 1] scaling."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from uniid_core.errors import FaceDetectionError

if TYPE_CHECKING:
    import torch

ALIGNED_SIZE = 112

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
"""ArcFace 112x112 landmarks: left eye, right eye, nose tip, left and right mouth corner (as seen)."""


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) taking src points onto dst (Umeyama)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise FaceDetectionError(
            f"landmarks must be two matching (K,2) arrays, got {src.shape} and {dst.shape}"
        )
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / src.shape[0]
    u, sing, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    src_var = (src_c**2).sum() / src.shape[0]
    if src_var <= 1e-12:
        raise FaceDetectionError("all landmarks coincide; the detection is degenerate and cannot be aligned")
    scale = float((sing * sign).sum() / src_var)
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """2x3 affine matrix taking image coordinates to the size x size ArcFace crop."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
        raise FaceDetectionError(
            f"expected 5 finite (x, y) landmarks, got an array of shape {landmarks.shape}"
        )
    return estimate_similarity(landmarks, ARCFACE_TEMPLATE.astype(np.float64) * (size / ALIGNED_SIZE))


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp the face given by 5 ArcFace-order landmarks to a size x size RGB uint8 crop (black outside)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise FaceDetectionError(
            f"align_face needs an HxWx3 uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype} "
            "(convert with uniid_core.face.image.to_rgb_uint8)"
        )
    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(image_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def resize_aligned(image_rgb: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Resize an already aligned crop to size x size (area filter when shrinking, bicubic when enlarging)."""
    height, width = image_rgb.shape[:2]
    if (height, width) == (size, size):
        return image_rgb.copy()
    shrink = height >= size and width >= size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.resize(image_rgb, (size, size), interpolation=interpolation)


def stack_aligned(aligned: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Stack aligned crops into one (R,112,112,3) uint8 array, checking shape and type."""
    if isinstance(aligned, np.ndarray):
        batch = aligned[None] if aligned.ndim == 3 else aligned
    else:
        batch = (
            np.stack([np.asarray(a) for a in aligned])
            if len(aligned)
            else np.zeros((0, ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)
        )
    if batch.ndim != 4 or batch.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3) or batch.dtype != np.uint8:
        raise FaceDetectionError(
            f"expected aligned uint8 crops of shape (R,{ALIGNED_SIZE},{ALIGNED_SIZE},3), "
            f"got {batch.shape} {batch.dtype}"
        )
    return batch


def faces_to_tensor(aligned: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Aligned uint8 crops -> float32 (R,3,112,112) in [-1, 1] by the official (x * (1/255) - 0.5) / 0.5."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(stack_aligned(aligned)))
    x = batch.permute(0, 3, 1, 2).to(torch.float32).mul(1.0 / 255.0)
    return x.sub(0.5).div(0.5).contiguous()
