"""Loader nodes: UniID weights, the IResNet-100 face net and the face detector."""

from __future__ import annotations

import comfy.utils
import torch
from comfy_api.v0_0_2 import io

from uniid_core.checkpoint import load_face_net, load_uniid
from uniid_core.face.detect import face_backend_names
from uniid_core.face.insightface_backend import DEFAULT_DET_SIZE, OFFICIAL_PACK
from uniid_core.face.providers import PROVIDERS
from uniid_core.precision import DTYPES

from . import paths
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID, UNIID_FACE_DETECTOR, UNIID_FACE_NET, FaceDetectorSpec, FaceNet, UniIDWeights


class UniIDLoader(UniIDNode):
    """Load UniID weights (project .safetensors, official folder or pytorch_model.bin) from models/uniid."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDLoader",
            display_name="UniID Loader",
            category=CATEGORY,
            description="Loads the UniID text and adapter branches.",
            inputs=[
                io.Combo.Input(
                    "uniid_name",
                    options=paths.uniid_weight_choices(),
                    tooltip="UniID weights in models/uniid: a release folder as downloaded (ending in /; "
                    "both branches, found by their contents), the single .safetensors, or one branch file "
                    "(pytorch_model.bin / model.safetensors) on its own",
                ),
                io.Combo.Input(
                    "dtype",
                    options=["auto", *DTYPES],
                    tooltip="Precision of the adapter projections used while sampling; auto follows the "
                    "UNet's compute dtype when UniID is applied",
                ),
            ],
            outputs=[UNIID.Output(display_name="uniid")],
        )

    @classmethod
    def execute(cls, uniid_name: str, dtype: str) -> io.NodeOutput:
        bar = comfy.utils.ProgressBar(2)
        weights = load_uniid_weights(uniid_name, dtype)
        bar.update(2)
        return io.NodeOutput(weights)


class UniIDFaceNetLoader(UniIDNode):
    """Load the IResNet-100 face-recognition net (e.g. glint360k r100 backbone.pth)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDFaceNetLoader",
            display_name="UniID Face Net Loader",
            category=CATEGORY,
            description="Loads the face-recognition network whose features feed UniID.",
            inputs=[
                io.Combo.Input(
                    "face_net_name",
                    options=paths.face_net_choices(),
                    tooltip="IResNet-100 backbone (.pth, .safetensors or .bin) from models/uniid (also "
                    "inside a release folder) or models/insightface",
                ),
            ],
            outputs=[UNIID_FACE_NET.Output(display_name="face_net")],
        )

    @classmethod
    def execute(cls, face_net_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_face_net_choice(face_net_name))


class UniIDFaceDetectorLoader(UniIDNode):
    """Choose the face detector: insightface (gender -> class word), mtcnn (offline) or pre-aligned crops."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDFaceDetectorLoader",
            display_name="UniID Face Detector Loader",
            category=CATEGORY,
            description="Selects and configures the face detector used by UniID Encode Face.",
            inputs=[
                io.Combo.Input(
                    "backend",
                    options=face_backend_names(),
                    tooltip="insightface: best, gives man/woman; mtcnn: no insightface needed; pre-aligned: "
                    "the images already are 112x112 ArcFace crops",
                ),
                io.Combo.Input(
                    "provider",
                    options=list(PROVIDERS),
                    tooltip="onnxruntime accelerator for insightface / mtcnn",
                ),
                io.Combo.Input(
                    "insightface_model",
                    options=paths.insightface_model_choices(),
                    tooltip="Model pack folder in models/insightface/models/; buffalo_l is the official "
                    "choice",
                ),
                io.Int.Input(
                    "det_size",
                    default=DEFAULT_DET_SIZE,
                    min=128,
                    max=1280,
                    step=32,
                    tooltip="insightface detection size (official: 320; it moves the landmarks and so the "
                    "identity); other sizes are tried only when no face is found",
                ),
            ],
            outputs=[UNIID_FACE_DETECTOR.Output(display_name="face_detector")],
        )

    @classmethod
    def execute(cls, backend: str, provider: str, insightface_model: str, det_size: int) -> io.NodeOutput:
        return io.NodeOutput(face_detector_spec(backend, provider, insightface_model, det_size))


def load_uniid_weights(uniid_name: str, dtype: str) -> UniIDWeights:
    """The UniID weights of a models/uniid choice, on the CPU (ComfyUI moves them when they are used)."""
    path = paths.resolve_uniid_weights(uniid_name)
    with torch.inference_mode(False):
        model = load_uniid(path, dtype=DTYPES.get(dtype), device="cpu")
    model.eval().requires_grad_(False)
    return UniIDWeights(model=model, source=uniid_name, dtype_choice=dtype)


def load_face_net_choice(face_net_name: str) -> FaceNet:
    """The face net of a face-net dropdown choice ('<folder>/<file>'), on the CPU."""
    net = load_face_net(paths.resolve_face_net(face_net_name), device="cpu")
    return FaceNet(net=net, source=face_net_name)


def face_detector_spec(
    backend: str,
    provider: str = "CPU",
    insightface_model: str = OFFICIAL_PACK,
    det_size: int = DEFAULT_DET_SIZE,
) -> FaceDetectorSpec:
    """A detector choice, built now so that a missing package or model pack is reported by the loader."""
    settings = {
        "root": paths.folder_dirs(paths.INSIGHTFACE_FOLDER),
        "name": insightface_model,
        "provider": provider,
        "det_size": det_size,
    }
    spec = FaceDetectorSpec(backend=backend, settings=settings)
    spec.get()
    return spec
