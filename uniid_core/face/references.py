"""Reference photos -> one aligned face per photo, with selection, skip-or-error and a per-image report.

Several photos of one person are all returned here; the identity encoder combines them
(uniid_core.identity.encode_identity, combine="mean_features" by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from uniid_core.errors import FaceDetectionError, NoFaceError
from uniid_core.face.align import align_face, faces_to_tensor, stack_aligned
from uniid_core.face.class_word import DEFAULT_CLASS_WORD, class_word_from_gender
from uniid_core.face.detect import DetectedFace, FaceDetector, make_detector, sort_left_to_right
from uniid_core.face.image import ALPHA_BACKGROUND, to_rgb_uint8
from uniid_core.face.preview import aligned_preview

if TYPE_CHECKING:
    import torch

SELECT_MODES = ("largest", "score")
ON_NO_FACE = ("error", "skip")


@dataclass
class ImageReport:
    """What happened to one input image: used ("ok") or dropped ("skipped"), and why."""

    index: int
    status: str
    num_faces: int = 0
    selected: int | None = None
    """Position of the chosen face among the faces sorted left to right."""
    face: DetectedFace | None = None
    all_faces: list[DetectedFace] = field(default_factory=list)
    """Every face found, sorted left to right (for draw_detections with `selected`)."""
    message: str = ""


@dataclass
class PreparedFaces:
    """Aligned crops of the kept images, the class word, and one report per input image."""

    aligned: np.ndarray
    class_word: str
    reports: list[ImageReport] = field(default_factory=list)

    @cached_property
    def tensor(self) -> torch.Tensor:
        """The crops as the face net's input: float32 (R,3,112,112) in [-1, 1]."""
        return faces_to_tensor(self.aligned)

    @property
    def faces(self) -> list[DetectedFace]:
        """The selected face of each kept image, in input order."""
        return [r.face for r in self.reports if r.status == "ok" and r.face is not None]

    @property
    def kept(self) -> list[int]:
        """Indices of the input images that gave a face."""
        return [r.index for r in self.reports if r.status == "ok"]

    @property
    def skipped(self) -> list[int]:
        """Indices of the input images that were dropped."""
        return [r.index for r in self.reports if r.status != "ok"]

    def preview(self) -> np.ndarray:
        """The crops as a float [0, 1] (R,112,112,3) batch (a ComfyUI IMAGE)."""
        return aligned_preview(self.aligned)

    def summary(self) -> str:
        """One line per image, for logs and a node's text output."""
        lines = [f"class word: {self.class_word}; {len(self.kept)} of {len(self.reports)} images used"]
        for r in self.reports:
            if r.status == "ok":
                lines.append(f"image {r.index}: face {r.selected} (from the left) of {r.num_faces}")
            else:
                lines.append(f"skipped {r.message}")
        return "\n".join(lines)


def _parse_select(select: str | int) -> str | int:
    """Normalise a selection ("largest", "score", an index or its text) or raise a clear error."""
    if isinstance(select, str) and select.strip().lstrip("-").isdigit():
        return int(select)
    if (isinstance(select, int) and not isinstance(select, bool)) or select in SELECT_MODES:
        return select
    raise FaceDetectionError(f"unknown face selection {select!r}; use 'largest', 'score' or a face index")


def select_face(faces: list[DetectedFace], select: str | int = "largest") -> tuple[int, DetectedFace]:
    """Pick one face: "largest" box, highest "score", or an index into the faces sorted left to right."""
    select = _parse_select(select)
    ordered = sort_left_to_right(faces)
    if not ordered:
        raise NoFaceError("no face to select from")
    if isinstance(select, int):
        if not -len(ordered) <= select < len(ordered):
            raise NoFaceError(
                f"face index {select} asked but only {len(ordered)} face(s) found (index 0 is the leftmost, "
                f"{len(ordered) - 1} the rightmost; -1 also means the rightmost)"
            )
        return select % len(ordered), ordered[select % len(ordered)]
    if select == "largest":
        position = max(range(len(ordered)), key=lambda i: (ordered[i].area, ordered[i].score))
    else:
        position = max(range(len(ordered)), key=lambda i: (ordered[i].score, ordered[i].area))
    return position, ordered[position]


def _iter_images(images: Any) -> list[Any]:
    """A list of images from a list, one image, or a 4-D batch (ComfyUI IMAGE (B,H,W,C))."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if len(getattr(images, "shape", ())) == 4:
        return [images[i] for i in range(images.shape[0])]
    return [images]


def _no_face_advice(detector: FaceDetector, on_no_face: str) -> str:
    """The message for an image without a face, saying what to try."""
    backend = getattr(detector, "name", type(detector).__name__)
    advice = (
        f"no face found (detector: {backend}). Try a larger detection size, another detector backend "
        "(insightface / mtcnn), or a closer and well-lit crop of the face"
    )
    return advice + (", or on_no_face='skip' to drop this image" if on_no_face == "error" else "")


def prepare_faces(
    images: Sequence[Any] | Any,
    detector: FaceDetector | str,
    select: str | int = "largest",
    on_no_face: str = "error",
    class_word: str | None = None,
    fallback_class_word: str = DEFAULT_CLASS_WORD,
    alpha_background: int = ALPHA_BACKGROUND,
    unanimous_class_word: bool = False,
) -> PreparedFaces:
    """Detect, select and align one face per image; `skip` drops bad images, but all failing still raises.

    The automatic class word is the majority gender of the faces, or with ``unanimous_class_word`` (one
    identity per photo, several people sharing one prompt) the gender only when all faces have it.
    """
    if on_no_face not in ON_NO_FACE:
        raise FaceDetectionError(f"on_no_face must be one of {ON_NO_FACE}, got {on_no_face!r}")
    select = _parse_select(select)
    if isinstance(detector, str):
        detector = make_detector(detector)
    items = _iter_images(images)
    if not items:
        raise FaceDetectionError("no reference images given; connect at least one photo of the person")
    reports: list[ImageReport] = []
    crops: list[np.ndarray] = []
    for index, item in enumerate(items):
        faces: list[DetectedFace] = []
        try:
            image = to_rgb_uint8(item, alpha_background=alpha_background)
            faces = sort_left_to_right(detector.detect(image))
            if not faces:
                raise NoFaceError(_no_face_advice(detector, on_no_face))
            position, face = select_face(faces, select)
        except FaceDetectionError as exc:
            message = f"image {index}: {exc}"
            if on_no_face == "error":
                raise type(exc)(message) from exc
            reports.append(ImageReport(index, "skipped", len(faces), all_faces=faces, message=message))
            continue
        crops.append(face.aligned if face.aligned is not None else align_face(image, face.landmarks))
        reports.append(ImageReport(index, "ok", len(faces), selected=position, face=face, all_faces=faces))
    if not crops:
        details = "; ".join(r.message for r in reports)
        raise NoFaceError(f"none of the {len(items)} reference images gave a usable face ({details})")
    word = class_word.strip() if class_word and class_word.strip().lower() != "auto" else None
    if word is None:
        word = class_word_from_gender(
            [r.face.gender for r in reports if r.face is not None], fallback_class_word, unanimous_class_word
        )
    return PreparedFaces(aligned=stack_aligned(crops), class_word=word, reports=reports)
