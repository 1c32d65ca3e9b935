"""Turn whatever image a user or ComfyUI hands us into a clean RGB uint8 array, or say clearly why not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from uniid_core.errors import FaceDetectionError

MIN_SIDE = 32
"""Images smaller than this on either side hold too few pixels for a usable face."""

ALPHA_BACKGROUND = 255
"""Transparent pixels are composited on white (255), the usual backdrop of portrait cut-outs."""


def _as_numpy(array: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors (ComfyUI IMAGE rows) and array-likes without importing torch."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(getattr(array, "dtype", "")) == "torch.bfloat16":
            array = array.float()
        array = array.numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise FaceDetectionError(
            f"not an image: cannot read {type(array).__name__} as an array ({exc})"
        ) from exc


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Map any supported pixel type to uint8: 16-bit is scaled down, float is read as [0, 1]."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise FaceDetectionError(
                f"integer image with values {low}..{high} is not 8- or 16-bit; convert it to uint8 RGB first"
            )
        if high > 255:
            return _to_uint8(array.astype(np.uint16))
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise FaceDetectionError(
                "image holds NaN or infinite values (a corrupt tensor); regenerate or reload it"
            )
        if values.size and (values.max() > 2.0 or values.min() < -1.0):
            raise FaceDetectionError(
                f"float image has values {values.min():.3g}..{values.max():.3g}; expected [0, 1] as ComfyUI "
                "IMAGE tensors use (divide 0-255 data by 255)"
            )
        return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise FaceDetectionError(
        f"unsupported pixel type {array.dtype}; give uint8, uint16 or float [0, 1] pixels"
    )


def _composite(color: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    """Blend color over a flat background using an alpha channel (all uint8)."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = color.astype(np.float32) * a + float(background) * (1.0 - a)
    return np.round(out).astype(np.uint8)


def to_rgb_uint8(array: Any, alpha_background: int = ALPHA_BACKGROUND) -> np.ndarray:
    """Return an HxWx3 RGB uint8 copy of a gray, gray+alpha, RGB or RGBA image of 8/16-bit or float pixels."""
    image = _as_numpy(array)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim not in (2, 3):
        raise FaceDetectionError(
            f"expected one image of shape HxW or HxWxC, got an array of shape {tuple(image.shape)}"
        )
    if image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4):
        raise FaceDetectionError(
            f"expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels last, "
            f"got shape {tuple(image.shape)}"
        )
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise FaceDetectionError(
            f"image is {width}x{height} pixels; at least {MIN_SIDE} px on each side is needed to find a face "
            "(use a larger photo)"
        )
    image = _to_uint8(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels == 2:
        gray = _composite(image[..., :1], image[..., 1], alpha_background)
        return np.ascontiguousarray(np.repeat(gray, 3, axis=2))
    if channels == 4:
        return np.ascontiguousarray(_composite(image[..., :3], image[..., 3], alpha_background))
    return np.ascontiguousarray(image)


def load_image(path: str | Path, alpha_background: int = ALPHA_BACKGROUND) -> np.ndarray:
    """Read an image file as RGB uint8 (EXIF rotation applied); every error names the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FaceDetectionError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA")
            elif img.mode == "F":
                img = img.convert("L")
            elif img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B"):
                img = img.convert("RGB")
            array = np.array(img)
    except Image.DecompressionBombError as exc:
        raise FaceDetectionError(
            f"could not read {path}: it is too large to open safely ({exc}); scale it down (a face needs no "
            "more than a few megapixels)"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise FaceDetectionError(
            f"could not read {path}: the file is corrupt, truncated or not an image ({exc}); "
            "re-save or re-download it"
        ) from exc
    try:
        return to_rgb_uint8(array, alpha_background=alpha_background)
    except FaceDetectionError as exc:
        raise FaceDetectionError(f"{path}: {exc}") from exc
