"""The insightface backend (FaceAnalysis, buffalo_l / antelopev2), imported lazily, with model-folder checks.

Layout insightface expects: `<root>/models/<name>/*.onnx`. In ComfyUI that is
`ComfyUI/models/insightface/models/antelopev2/*.onnx` with root `ComfyUI/models/insightface`.
We never let insightface download: the folder is checked first and every classic mistake is explained.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from uniid_core.errors import FaceDetectionError
from uniid_core.face.detect import DetectedFace, detect_with_padding
from uniid_core.face.providers import INSTALL_HINTS, resolve_providers

logger = logging.getLogger(__name__)

DETECTION_PREFIXES = ("det_", "scrfd")
OFFICIAL_PACK = "buffalo_l"
"""The model pack of the official detector (insightface buffalo_l in the official inference.py)."""
DEFAULT_ROOT = "~/.insightface"
"""insightface's own model root (packs in <root>/models/<name>/)."""
DEFAULT_DET_SIZE = 320
"""The official detection size (insightface buffalo_l at 320x320 in the official inference.py)."""
DET_SIZE_LADDER = (256, 320, 384, 512, 640)
GENDER_MODEL = "genderage.onnx"
REQUIRED_FILES = {
    OFFICIAL_PACK: ("det_10g.onnx", GENDER_MODEL),
    "antelopev2": ("scrfd_10g_bnkps.onnx", GENDER_MODEL),
}
"""The files we load (detection + gender) of the packs as insightface's model zoo ships them."""
DOWNLOAD_HINT = (
    "download the insightface model pack {name}.zip yourself (nothing is downloaded automatically) and "
    "unzip it so that the .onnx files sit directly in {folder}"
)


def _onnx_files(folder: Path) -> list[Path]:
    """The .onnx files directly inside a folder (none when it does not exist)."""
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


class PackNotFoundError(FaceDetectionError):
    """Nothing of a model pack under one root: no folder, zip or misplaced copy."""


def _nested_folders(folder: Path) -> list[Path]:
    """Subfolders (one level down) that hold .onnx files: the 'unzipped one level too deep' mistake."""
    return (
        [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and _onnx_files(sub)]
        if folder.is_dir()
        else []
    )


def check_model_folder(root: str | Path, name: str = OFFICIAL_PACK) -> Path:
    """Return `<root>/models/<name>` if it holds a usable model pack, else raise saying which path to fix.

    A root that already ends in `models` (holding `<name>/`) is accepted too.
    """
    root = Path(root).expanduser()
    if root.name == "models" and _onnx_files(root / name) and not _onnx_files(root / "models" / name):
        root = root.parent
    folder = root / "models" / name
    hint = DOWNLOAD_HINT.format(name=name, folder=folder)
    files = _onnx_files(folder)
    if not files:
        zips = [
            p
            for p in (root / "models" / f"{name}.zip", folder / f"{name}.zip", root / f"{name}.zip")
            if p.is_file()
        ]
        nested = _nested_folders(folder)
        if nested:
            raise FaceDetectionError(
                f"the insightface model pack '{name}' is nested one level too deep: the .onnx files are in "
                f"{nested[0]} but must be directly in {folder}. Move them up one level "
                f"(so that e.g. {folder / _onnx_files(nested[0])[0].name} exists) "
                "and delete the empty folder."
            )
        if zips:
            raise FaceDetectionError(
                f"found {zips[0]} but it is not unpacked: unzip it so that the .onnx files sit directly in "
                f"{folder} (not in {folder / name})"
            )
        if _onnx_files(root / name):
            raise FaceDetectionError(
                f"the insightface model pack '{name}' is in {root / name} but must be in {folder}: "
                f"insightface looks in <root>/models/<name>; move the folder into {root / 'models'}"
            )
        if folder.is_dir():
            raise FaceDetectionError(f"{folder} holds no .onnx model files; {hint}")
        raise PackNotFoundError(f"insightface model folder not found: {folder}; {hint}")
    problems = []
    missing = _missing_files(name, [p.name for p in files])
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    empty = [p.name for p in files if p.stat().st_size == 0]
    if empty:
        problems.append(f"empty (0 bytes: the download or unzip was interrupted) {', '.join(empty)}")
    if problems:
        raise FaceDetectionError(
            f"the insightface model pack in {folder} is incomplete: {'; '.join(problems)} (found "
            f"{', '.join(p.name for p in files)}); replace it with a fresh copy: {hint}"
        )
    return folder


def _missing_files(name: str, present: list[str]) -> list[str]:
    """The detection and gender models a pack lacks (exact names for the known packs)."""
    lower = {p.lower() for p in present}
    if name in REQUIRED_FILES:
        return [f for f in REQUIRED_FILES[name] if f not in lower]
    missing = []
    if not any(p.startswith(DETECTION_PREFIXES) for p in lower):
        missing.append("a face detection model (det_*.onnx or scrfd_*.onnx)")
    if GENDER_MODEL not in lower:
        missing.append(GENDER_MODEL)
    return missing


def find_model_pack(roots: str | Path | Sequence[str | Path], name: str = OFFICIAL_PACK) -> Path:
    """The pack folder under the first root that holds it; when none does, an error naming every folder."""
    roots = [roots] if isinstance(roots, str | Path) else list(roots)
    searched = []
    for root in roots:
        try:
            return check_model_folder(root, name)
        except PackNotFoundError:
            searched.append(Path(root).expanduser() / "models" / name)
    if not searched:
        raise FaceDetectionError("no insightface model folder given to search")
    hint = DOWNLOAD_HINT.format(name=name, folder=searched[0])
    raise FaceDetectionError(
        f"insightface model pack '{name}' not found; searched {', '.join(map(str, searched))}; {hint}"
    )


def _det_sizes(det_size: int | Sequence[int]) -> list[int]:
    """Detection sizes to try: the requested one, then the larger rungs of the ladder, then the smaller.

    Only the first size decides the result whenever it finds a face; the others are a no-face fallback
    (larger sizes find small faces in big photos, smaller ones faces that fill the frame).
    """
    if isinstance(det_size, int):
        if det_size < 32 or det_size % 32:
            raise FaceDetectionError(f"det_size must be a multiple of 32 and >= 32, got {det_size}")
        larger = [s for s in DET_SIZE_LADDER if s > det_size]
        smaller = [s for s in reversed(DET_SIZE_LADDER) if s < det_size]
        return [det_size, *larger, *smaller]
    sizes = [int(s) for s in det_size]
    if not sizes or any(s < 32 or s % 32 for s in sizes):
        raise FaceDetectionError(f"det_size ladder must hold multiples of 32 (>= 32), got {list(det_size)}")
    return sizes


class InsightFaceDetector:
    """FaceAnalysis detection + gender (from the pack's genderage model) with a det_size fallback ladder.

    ``root`` may be several folders (ComfyUI's insightface folders): the first that holds the pack is used.
    """

    name = "insightface"

    def __init__(
        self,
        root: str | Path | Sequence[str | Path] = DEFAULT_ROOT,
        name: str = OFFICIAL_PACK,
        provider: str = "CPU",
        det_size: int | Sequence[int] = DEFAULT_DET_SIZE,
        det_thresh: float = 0.5,
        pad_retry: bool = True,
    ) -> None:
        self.folder = find_model_pack(root, name)
        self.providers = resolve_providers(provider)
        self.det_sizes = _det_sizes(det_size)
        self.det_thresh = float(det_thresh)
        self.pad_retry = pad_retry
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise FaceDetectionError(
                f"insightface is not installed or does not import ({exc}); pip install insightface "
                "(on Windows use a prebuilt wheel), or choose the mtcnn face detector (no download needed)"
            ) from exc
        self._ctx_id = -1 if self.providers == ["CPUExecutionProvider"] else 0
        try:
            self.app = FaceAnalysis(
                name=name,
                root=str(self.folder.parent.parent),
                providers=self.providers,
                allowed_modules=["detection", "genderage"],
            )
        except AssertionError as exc:
            raise FaceDetectionError(
                f"insightface found no detection model in {self.folder}; check the files there against a "
                f"fresh copy of {name}.zip"
            ) from exc
        except Exception as exc:
            raise FaceDetectionError(
                f"insightface could not load the models in {self.folder}: {exc}"
            ) from exc
        if "genderage" not in getattr(self.app, "models", {}):
            raise FaceDetectionError(
                f"insightface did not load a gender model from {self.folder} ({GENDER_MODEL} is damaged or "
                f"of another kind), so the class word could not be man/woman; replace the files with a fresh "
                f"copy of {name}.zip"
            )
        self._prepared: int | None = None
        self.active_providers = self._check_active_providers()

    def _check_active_providers(self) -> list[str]:
        """Providers the detection session really uses; warns when onnxruntime fell back to the CPU."""
        session = getattr(self.app.det_model, "session", None)
        active = list(session.get_providers()) if hasattr(session, "get_providers") else list(self.providers)
        wanted = self.providers[0]
        if wanted not in active:
            logger.warning(
                "insightface asked for %s but onnxruntime runs the detector on %s (the provider failed "
                "to start: CUDA/cuDNN libraries missing or mismatched?). Detection still works, only "
                "slower. Fix: %s",
                wanted,
                ", ".join(active),
                INSTALL_HINTS.get(wanted, "check the onnxruntime build"),
            )
        return active

    def _prepare(self, size: int) -> None:
        """Set the detector's input size (cheap; only when it changes)."""
        if self._prepared != size:
            self.app.prepare(ctx_id=self._ctx_id, det_thresh=self.det_thresh, det_size=(size, size))
            self._prepared = size

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """Detect faces down the det_size ladder; if none, once more on a padded canvas (tight crops)."""
        return detect_with_padding(self._detect_ladder, image_rgb, self.pad_retry)

    def _detect_ladder(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """Try each det_size in turn and return the first non-empty result."""
        bgr = np.ascontiguousarray(image_rgb[..., ::-1])
        for size in self.det_sizes:
            self._prepare(size)
            found = self.app.get(bgr)
            if found:
                return [self._convert(face, image_rgb.shape[1], image_rgb.shape[0]) for face in found]
        return []

    @staticmethod
    def _convert(face: object, width: int, height: int) -> DetectedFace:
        """insightface Face -> DetectedFace (box clipped to the image; gender 1 = man, 0 = woman)."""
        gender = getattr(face, "gender", None)
        x1, x2 = np.clip(np.asarray(face.bbox, dtype=np.float64)[[0, 2]], 0, width).tolist()
        y1, y2 = np.clip(np.asarray(face.bbox, dtype=np.float64)[[1, 3]], 0, height).tolist()
        return DetectedFace(
            box=(x1, y1, x2, y2),
            landmarks=np.asarray(face.kps, dtype=np.float32).reshape(5, 2),
            score=float(face.det_score),
            gender=None if gender is None else ("man" if int(gender) == 1 else "woman"),
        )
