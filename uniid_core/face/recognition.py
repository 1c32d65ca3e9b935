"""Face-recognition embedders for scoring: our IResNet-100 face net, or an insightface ArcFace ONNX model.

Both take aligned 112x112 RGB uint8 crops (the ArcFace template of uniid_core.face.align, the one
insightface's norm_crop also uses) and return L2-normalised embeddings, so a dot product is a cosine.
onnxruntime (and onnx, for one input-scaling check) are imported only when an ONNX model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from uniid_core.errors import FaceDetectionError
from uniid_core.face.align import ALIGNED_SIZE, stack_aligned
from uniid_core.face.providers import resolve_providers

if TYPE_CHECKING:
    from uniid_core.models.iresnet import FaceRecognitionNet

FACE_NET_KIND = "uniid-face-net"
"""Kind of the embeddings our IResNet-100 makes (and an Identity's face_embedding holds)."""
RECOGNITION_FILES = ("w600k_r50.onnx", "glintr100.onnx")
"""The recognition models of insightface's buffalo_l and antelopev2 packs (as its model zoo names them)."""
NOT_RECOGNITION_PREFIXES = ("det_", "scrfd", "retinaface", "1k3d68", "2d106det", "genderage", "inswapper")
"""File-name starts of the other models insightface's packs and face-swap packs put next to the recognition
model (detectors, landmarks, gender/age, face swap), as its model zoo names them."""
DEFAULT_BATCH = 32


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float32 (an all-zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@runtime_checkable
class FaceEmbedder(Protocol):
    """Anything that turns aligned 112x112 RGB uint8 crops (R,112,112,3) into unit embeddings (R,D)."""

    name: str
    """Readable name for reports (which net made the score)."""
    kind: str
    """Embeddings of different kinds live in different spaces and must never be compared."""

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """Return float32 (R, D) L2-normalised embeddings, one per crop."""
        ...


class FaceNetEmbedder:
    """Our IResNet-100 face net (the one UniID conditions on), run on whatever device it sits on."""

    kind = FACE_NET_KIND

    def __init__(
        self,
        net: FaceRecognitionNet,
        batch_size: int = DEFAULT_BATCH,
        name: str = "UniID face net (IResNet-100)",
    ) -> None:
        self.net = net
        self.batch_size = max(1, int(batch_size))
        self.name = name

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """Embed crops in batches with the official [-1, 1] input scaling; float32 unit rows."""
        import torch

        from uniid_core.face.align import faces_to_tensor

        crops = stack_aligned(aligned)
        param = next(self.net.parameters())
        rows = []
        with torch.no_grad():
            for start in range(0, len(crops), self.batch_size):
                x = faces_to_tensor(crops[start : start + self.batch_size])
                rows.append(self.net(x.to(device=param.device, dtype=param.dtype)).embedding.float().cpu())
        return l2_normalize(torch.cat(rows).numpy()) if rows else np.zeros((0, 512), np.float32)


def may_be_recognition_model(file_name: str | Path) -> bool:
    """Whether an .onnx file may be a face-recognition model: not one of insightface's other model kinds.

    A file that passes and still is no ArcFace model is refused with a clear message when it is loaded.
    """
    name = Path(file_name).name.lower()
    return name.endswith(".onnx") and not name.startswith(NOT_RECOGNITION_PREFIXES)


def find_recognition_model(path: str | Path) -> Path:
    """The ArcFace ONNX file itself, or the one inside an insightface pack folder (w600k_r50 / glintr100)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FaceDetectionError(
            f"face-recognition model not found: {path}; give the ArcFace .onnx file (e.g. "
            f"models/buffalo_l/w600k_r50.onnx) or its pack folder"
        )
    for name in RECOGNITION_FILES:
        if (path / name).is_file():
            return path / name
    found = ", ".join(p.name for p in sorted(path.glob("*.onnx"))) or "no .onnx files"
    raise FaceDetectionError(
        f"{path} holds no insightface recognition model ({' or '.join(RECOGNITION_FILES)}; found {found}); "
        "give the recognition .onnx file itself"
    )


def _normalizes_itself(path: Path) -> bool:
    """Whether the graph scales its own input (a Sub and a Mul among its first 8 nodes, the MXNet-era
    export): insightface's ArcFaceONNX then feeds raw 0..255 pixels. Without onnx, assume it does not,
    which holds for w600k_r50 and glintr100."""
    try:
        import onnx
    except ImportError:
        return False
    names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul


class OnnxFaceEmbedder:
    """insightface's ArcFace recognition model (e.g. buffalo_l/w600k_r50.onnx) run through onnxruntime.

    Input as insightface's ArcFaceONNX.get_feat prepares it: RGB, NCHW, (x - 127.5) / 127.5, or raw pixels
    for graphs that normalise themselves.
    """

    def __init__(self, path: str | Path, provider: str = "CPU", batch_size: int = DEFAULT_BATCH) -> None:
        self.path = find_recognition_model(path)
        if self.path.stat().st_size == 0:
            raise FaceDetectionError(f"{self.path} is empty (0 bytes): download or unzip it again")
        providers = resolve_providers(provider)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for every kind of damage
            raise FaceDetectionError(
                f"onnxruntime could not load {self.path} ({exc}); replace it with a fresh copy"
            ) from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape)
        if (
            len(inputs) != 1
            or len(outputs) != 1
            or len(shape) != 4
            or shape[1:] != [3, ALIGNED_SIZE, ALIGNED_SIZE]
        ):
            raise FaceDetectionError(
                f"{self.path} is not an ArcFace recognition model (it takes {len(inputs)} input(s) of shape "
                f"{shape} and gives {len(outputs)} output(s); expected one (N, 3, 112, 112) image input and "
                f"one embedding output): give {' or '.join(RECOGNITION_FILES)}"
            )
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.batch_size = self.fixed_batch or max(1, int(batch_size))
        self.raw_pixels = _normalizes_itself(self.path)
        self.name = f"insightface {self.path.parent.name}/{self.path.name}"
        self.kind = f"onnx:{self.path.name}"

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """Embed crops in batches (one at a time for a fixed-batch graph); float32 unit rows."""
        crops = stack_aligned(aligned)
        blob = crops.transpose(0, 3, 1, 2).astype(np.float32)
        if not self.raw_pixels:
            blob = (blob - 127.5) / 127.5
        rows = []
        for start in range(0, len(blob), self.batch_size):
            chunk = blob[start : start + self.batch_size]
            out = self.session.run(None, {self.input_name: chunk})[0]
            rows.append(np.asarray(out, dtype=np.float32).reshape(len(chunk), -1))
        return l2_normalize(np.concatenate(rows)) if rows else np.zeros((0, 0), np.float32)
