"""Identity similarity: how much each generated face looks like the reference person.

Every image's face is found and aligned with the face pipeline (uniid_core.face), embedded by a
FaceEmbedder (our face net, or insightface's recognition model so that the score need not come from the
net that made the conditioning) and compared with the reference by cosine similarity. The reference is the
mean of its unit embeddings, renormalised. An image without a usable face gets no score and a reason; it
never stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FaceDetectionError, NoFaceError, UniIDError
from .face.align import align_face, stack_aligned
from .face.detect import FaceDetector, make_detector
from .face.image import to_rgb_uint8
from .face.recognition import FACE_NET_KIND, FaceEmbedder, l2_normalize
from .face.references import prepare_faces, select_face

SIMILARITY_DEFINITION = (
    "cosine similarity of L2-normalised face-recognition embeddings: the generated image's face against "
    "the reference (the mean of the reference faces' unit embeddings, renormalised); 1 = same direction"
)


@dataclass
class FaceCrop:
    """One image's face, found for scoring: the aligned 112x112 crop, or the reason there is none."""

    index: int
    aligned: np.ndarray | None
    num_faces: int = 0
    box: tuple[float, float, float, float] | None = None
    reason: str = ""


def _detector(detector: FaceDetector | str) -> FaceDetector:
    return make_detector(detector) if isinstance(detector, str) else detector


def find_face(
    image: Any, detector: FaceDetector | str, select: str | int = "largest", index: int = 0
) -> FaceCrop:
    """Detect, select and align one face of one image; a missing face or a bad image becomes a reason.

    An unknown ``select`` mode raises FaceDetectionError; a face index beyond the faces found is a reason.
    """
    detector = _detector(detector)
    try:
        rgb = to_rgb_uint8(image)
        faces = detector.detect(rgb)
    except FaceDetectionError as exc:
        return FaceCrop(index, None, reason=str(exc))
    if not faces:
        backend = getattr(detector, "name", type(detector).__name__)
        return FaceCrop(index, None, reason=f"no face found (detector: {backend})")
    try:
        _, face = select_face(faces, select)
    except NoFaceError as exc:
        return FaceCrop(index, None, len(faces), reason=str(exc))
    try:
        crop = face.aligned if face.aligned is not None else align_face(rgb, face.landmarks)
    except FaceDetectionError as exc:
        return FaceCrop(index, None, len(faces), reason=f"the face could not be aligned: {exc}")
    return FaceCrop(index, crop, len(faces), box=tuple(float(v) for v in face.box))


def _as_list(images: Any) -> list[Any]:
    """A list of images from a list, one image, or a 4-D batch (a ComfyUI IMAGE (B,H,W,C))."""
    if isinstance(images, list | tuple):
        return list(images)
    if len(getattr(images, "shape", ())) == 4:
        return [images[i] for i in range(images.shape[0])]
    return [images]


def find_faces(
    images: Any,
    detector: FaceDetector | str,
    select: str | int = "largest",
    on_image: Callable[[], None] | None = None,
) -> list[FaceCrop]:
    """find_face for every image of a list or batch; ``on_image`` is called after each (progress bars)."""
    detector = _detector(detector)
    crops = []
    for index, image in enumerate(_as_list(images)):
        crops.append(find_face(image, detector, select, index))
        if on_image is not None:
            on_image()
    return crops


def _rows(embeddings: Any) -> np.ndarray:
    """Embeddings (numpy or torch, (D,) or (R, D)) as a float64 (R, D) array."""
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    rows = np.asarray(embeddings, dtype=np.float64)
    return rows[None] if rows.ndim == 1 else rows


@dataclass(eq=False)  # holds an array: compare references field by field
class Reference:
    """The person to compare against: a unit embedding, the kind of net that made it, where it came from."""

    embedding: np.ndarray
    kind: str
    num_faces: int = 1
    source: str = "embeddings"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_embeddings(
        cls, embeddings: Any, kind: str = FACE_NET_KIND, source: str = "embeddings"
    ) -> Reference:
        """One or more precomputed embeddings (numpy or torch, (D,) or (R, D)) of one person, averaged."""
        rows = _rows(embeddings)
        if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] < 1:
            raise UniIDError(f"reference embeddings must be shaped (D,) or (R, D), got {rows.shape}")
        if not np.isfinite(rows).all() or not np.linalg.norm(rows, axis=1).all():
            raise UniIDError("reference embeddings hold NaN, infinite or all-zero rows; compute them again")
        mean = l2_normalize(l2_normalize(rows).astype(np.float64).mean(axis=0))
        if not np.linalg.norm(mean):
            raise UniIDError("the reference embeddings cancel out (their mean is zero); give other photos")
        return cls(mean, kind, rows.shape[0], source)

    @classmethod
    def from_photos(
        cls,
        photos: Sequence[Any] | Any,
        embedder: FaceEmbedder,
        detector: FaceDetector | str,
        select: str | int = "largest",
    ) -> Reference:
        """Photos of the person, each face found and embedded like the scored images; photos without a
        face are skipped (noted), all failing raises NoFaceError."""
        prepared = prepare_faces(photos, _detector(detector), select=select, on_no_face="skip")
        source = f"{len(prepared.kept)} of {len(prepared.reports)} reference photo(s)"
        reference = cls.from_embeddings(embedder.embed(prepared.aligned), embedder.kind, source)
        reference.notes = [r.message for r in prepared.reports if r.status != "ok"]
        return reference

    @classmethod
    def from_identity(cls, identity: Any) -> Reference:
        """The face-net embedding a UniID identity carries (only comparable with our face net's scores)."""
        embedding = getattr(identity, "face_embedding", None)
        if embedding is None:
            raise UniIDError(
                "this identity carries no face embedding (it was encoded or saved by an older version); "
                "encode the photos again with UniID Encode Face, or score against the reference photos"
            )
        rows = _rows(embedding)
        if rows.shape[0] != 1:
            raise UniIDError(
                f"the identity holds {rows.shape[0]} face embeddings; score against one identity"
            )
        count = int(getattr(identity, "num_references", 1))
        return cls.from_embeddings(rows, FACE_NET_KIND, f"identity ({count} reference photo(s))")


@dataclass
class ImageScore:
    """One image's similarity to the reference, or None with the reason it has none."""

    index: int
    score: float | None
    num_faces: int = 0
    box: tuple[float, float, float, float] | None = None
    reason: str = ""


@dataclass
class SimilarityReport:
    """Per-image scores in input order, with the ranking and summary a node or a CLI shows."""

    scores: list[ImageScore]
    scorer: str
    reference_source: str = ""

    @property
    def values(self) -> list[float]:
        """One float per image in input order; NaN where no face was found."""
        return [math.nan if s.score is None else s.score for s in self.scores]

    @property
    def order(self) -> list[int]:
        """Image indices best first; images without a score last, in input order."""
        scored = sorted((s for s in self.scores if s.score is not None), key=lambda s: (-s.score, s.index))
        return [s.index for s in scored] + [s.index for s in self.scores if s.score is None]

    @property
    def best(self) -> int | None:
        """Index of the most similar image, or None when no image had a face."""
        scored = [s for s in self.scores if s.score is not None]
        return max(scored, key=lambda s: (s.score, -s.index)).index if scored else None

    @property
    def detection_rate(self) -> float:
        """Fraction of images in which a face was found and scored."""
        return sum(s.score is not None for s in self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def mean(self) -> float | None:
        """Mean similarity over the images with a face (None when there is none)."""
        found = [s.score for s in self.scores if s.score is not None]
        return float(np.mean(found)) if found else None

    def table(self) -> str:
        """A fixed-width text table, best first, with a summary line (for a node's STRING output and logs)."""
        lines = [f"identity similarity (cosine; {self.scorer}) against {self.reference_source}"]
        lines.append(f"{'rank':>4}  {'image':>5}  {'similarity':>10}  {'faces':>5}")
        by_index = {s.index: s for s in self.scores}
        rank = 0
        for index in self.order:
            s = by_index[index]
            if s.score is None:
                lines.append(f"{'-':>4}  {index:>5}  {'-':>10}  {s.num_faces:>5}  {s.reason}")
            else:
                rank += 1
                lines.append(f"{rank:>4}  {index:>5}  {s.score:>10.4f}  {s.num_faces:>5}")
        summary = f"{rank} of {len(self.scores)} image(s) with a face"
        if self.mean is not None:
            summary += f"; mean {self.mean:.4f}; best: image {self.best}"
        lines.append(summary)
        return "\n".join(lines)


def score_faces(crops: Sequence[FaceCrop], reference: Reference, embedder: FaceEmbedder) -> SimilarityReport:
    """Embed the found faces in one pass and compare each with the reference."""
    if reference.kind != embedder.kind:
        raise UniIDError(
            f"the reference was embedded by another net ({reference.kind}) than the one scoring "
            f"({embedder.kind}): embeddings of different nets cannot be compared; build the reference "
            "from photos with the scoring net"
        )
    found = [c for c in crops if c.aligned is not None]
    similarities: dict[int, float] = {}
    if found:
        embeddings = embedder.embed(stack_aligned([c.aligned for c in found])).astype(np.float64)
        if embeddings.shape[1] != reference.embedding.shape[0]:
            raise UniIDError(
                f"{embedder.name} makes {embeddings.shape[1]}-d embeddings but the reference has "
                f"{reference.embedding.shape[0]}; build the reference with the scoring net"
            )
        cosines = np.clip(embeddings @ reference.embedding.astype(np.float64), -1.0, 1.0)
        similarities = {c.index: float(v) for c, v in zip(found, cosines, strict=True)}
    scores = [ImageScore(c.index, similarities.get(c.index), c.num_faces, c.box, c.reason) for c in crops]
    return SimilarityReport(scores, embedder.name, reference.source)


def score_images(
    images: Any,
    reference: Reference,
    embedder: FaceEmbedder,
    detector: FaceDetector | str,
    select: str | int = "largest",
    on_image: Callable[[], None] | None = None,
) -> SimilarityReport:
    """Score a list or batch of images (uint8 or float [0, 1] HxWx3, numpy or torch) against a reference."""
    return score_faces(find_faces(images, detector, select, on_image), reference, embedder)
