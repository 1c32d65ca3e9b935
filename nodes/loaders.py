"""Loader nodes: UniID weights, the IResNet-100 face net and the face detector."""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.utils
import torch

from uniid_core.checkpoint import load_face_net, load_uniid
from uniid_core.face.detect import face_backend_names, make_detector
from uniid_core.face.insightface_backend import DEFAULT_DET_SIZE
from uniid_core.face.providers import PROVIDERS
from uniid_core.precision import DTYPES

from . import paths
from .bundle import UniIDWeights, managed

CATEGORY = "UniID"


class UniIDLoader:
    """Load UniID weights (project .safetensors, official folder or pytorch_model.bin) from models/uniid."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "uniid_name": (
                    paths.uniid_weight_choices(),
                    {
                        "tooltip": "UniID weights in models/uniid: a release folder as downloaded (ending "
                        "in /; both branches, found by their contents), the single .safetensors, or one "
                        "branch file (pytorch_model.bin / model.safetensors) on its own"
                    },
                ),
                "dtype": (
                    ["auto", *DTYPES],
                    {
                        "tooltip": "Precision of the adapter projections used while sampling; auto follows "
                        "the UNet's compute dtype when UniID is applied"
                    },
                ),
            }
        }

    RETURN_TYPES = ("UNIID",)
    RETURN_NAMES = ("uniid",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the UniID text and adapter branches."

    def load(self, uniid_name: str, dtype: str) -> tuple[UniIDWeights]:
        path = paths.resolve_uniid_weights(uniid_name)
        bar = comfy.utils.ProgressBar(2)
        with torch.inference_mode(False):
            model = load_uniid(path, dtype=DTYPES.get(dtype), device="cpu")
        model.eval().requires_grad_(False)
        bar.update(2)
        return (UniIDWeights(model=model, source=uniid_name, dtype_choice=dtype),)


@dataclass
class FaceNet:
    """The face-recognition net on the UNIID_FACE_NET socket (ComfyUI loads and offloads it)."""

    net: object
    source: str
    _patcher: object = None

    def patcher(self) -> object:
        """The net's ModelPatcher, made once."""
        if self._patcher is None:
            self._patcher = managed(self.net)
        return self._patcher


class UniIDFaceNetLoader:
    """Load the IResNet-100 face-recognition net (e.g. glint360k r100 backbone.pth)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_net_name": (
                    paths.face_net_choices(),
                    {
                        "tooltip": "IResNet-100 backbone (.pth, .safetensors or .bin) from models/uniid "
                        "(also inside a release folder) or models/insightface"
                    },
                ),
            }
        }

    RETURN_TYPES = ("UNIID_FACE_NET",)
    RETURN_NAMES = ("face_net",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the face-recognition network whose features feed UniID."

    def load(self, face_net_name: str) -> tuple[FaceNet]:
        net = load_face_net(paths.resolve_face_net(face_net_name), device="cpu")
        return (FaceNet(net=net, source=face_net_name),)


@dataclass
class FaceDetectorSpec:
    """A face detector choice; the detector itself is built on first use and kept."""

    backend: str
    settings: dict = field(default_factory=dict)
    _detector: object = None

    def get(self) -> object:
        """The detector, built once (the backend's packages are imported only here)."""
        if self._detector is None:
            self._detector = make_detector(self.backend, **self.settings)
        return self._detector


class UniIDFaceDetectorLoader:
    """Choose the face detector: insightface (gender -> class word), mtcnn (offline) or pre-aligned crops."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "backend": (
                    face_backend_names(),
                    {
                        "tooltip": "insightface: best, gives man/woman; mtcnn: no insightface needed; "
                        "pre-aligned: the images already are 112x112 ArcFace crops"
                    },
                ),
                "provider": (list(PROVIDERS), {"tooltip": "onnxruntime accelerator for insightface / mtcnn"}),
                "insightface_model": (
                    paths.insightface_model_choices(),
                    {
                        "tooltip": "Model pack folder in models/insightface/models/; buffalo_l is the "
                        "official choice"
                    },
                ),
                "det_size": (
                    "INT",
                    {
                        "default": DEFAULT_DET_SIZE,
                        "min": 128,
                        "max": 1280,
                        "step": 32,
                        "tooltip": "insightface detection size (official: 320; it moves the landmarks and "
                        "so the identity); other sizes are tried only when no face is found",
                    },
                ),
            }
        }

    RETURN_TYPES = ("UNIID_FACE_DETECTOR",)
    RETURN_NAMES = ("face_detector",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Selects and configures the face detector used by UniID Encode Face."

    def load(
        self, backend: str, provider: str, insightface_model: str, det_size: int
    ) -> tuple[FaceDetectorSpec]:
        settings = {
            "root": paths.folder_dirs(paths.INSIGHTFACE_FOLDER),
            "name": insightface_model,
            "provider": provider,
            "det_size": det_size,
        }
        spec = FaceDetectorSpec(backend=backend, settings=settings)
        spec.get()
        return (spec,)
