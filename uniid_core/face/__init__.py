"""Face pipeline: detection backends, ArcFace alignment, selection, class word and previews.

Names are loaded on first use so that importing this package stays cheap (no cv2, onnxruntime,
insightface or torch until a function needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DetectedFace": "detect",
    "FaceDetector": "detect",
    "make_detector": "detect",
    "FaceBackend": "detect",
    "register_face_backend": "detect",
    "face_backend_names": "detect",
    "sort_left_to_right": "detect",
    "align_face": "align",
    "faces_to_tensor": "align",
    "ARCFACE_TEMPLATE": "align",
    "to_rgb_uint8": "image",
    "load_image": "image",
    "prepare_faces": "references",
    "select_face": "references",
    "PreparedFaces": "references",
    "ImageReport": "references",
    "class_word_from_gender": "class_word",
    "substitute_class_word": "class_word",
    "aligned_preview": "preview",
    "draw_detections": "preview",
    "check_model_folder": "insightface_backend",
    "resolve_providers": "providers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
