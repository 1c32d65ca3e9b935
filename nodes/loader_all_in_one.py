"""UniIDLoaderAllInOne: UniID weights, face net and face detector from one node (the three loaders' code).

The detector defaults to the bundled mtcnn: it needs nothing beyond requirements.txt and no download, so a
first graph runs as installed. insightface (buffalo_l at det size 320, the official detector) is one
choice away; other packs, sizes or providers are in UniID Face Detector Loader.
"""

from __future__ import annotations

import comfy.utils
from comfy_api.v0_0_2 import io

from uniid_core.face.detect import face_backend_names
from uniid_core.face.insightface_backend import DEFAULT_DET_SIZE, OFFICIAL_PACK

from . import paths
from .loaders import face_detector_spec, load_face_net_choice, load_uniid_weights
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID, UNIID_FACE_DETECTOR, UNIID_FACE_NET

FIRST_RUN_DETECTOR = "mtcnn"
"""The detector that works as installed (requirements.txt brings its model files)."""
DTYPE = "auto"
"""The adapter projections follow the UNet's compute dtype, as UniID Loader's default."""


class UniIDLoaderAllInOne(UniIDNode):
    """Load what UniID Encode Face needs in one node: UniID weights, the face net and a face detector."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDLoaderAllInOne",
            display_name="UniID Loader (all-in-one)",
            category=CATEGORY,
            description="Loads the UniID weights, the face net and a face detector in one node. UniID "
            "Loader, UniID Face Net Loader and UniID Face Detector Loader have every option.",
            inputs=[
                io.Combo.Input(
                    "uniid_name",
                    options=paths.uniid_weight_choices(),
                    tooltip="UniID weights in models/uniid: the release folder as downloaded (ending in /), "
                    "or the single .safetensors",
                ),
                io.Combo.Input(
                    "face_net_name",
                    options=paths.face_net_choices(),
                    tooltip="IResNet-100 face net (backbone.pth or .safetensors) from models/uniid (also "
                    "inside the release folder) or models/insightface",
                ),
                io.Combo.Input(
                    "backend",
                    options=face_backend_names(),
                    default=FIRST_RUN_DETECTOR,
                    tooltip=f"Face detector. mtcnn: bundled, works as installed. insightface: the official "
                    f"detector ({OFFICIAL_PACK} at det size {DEFAULT_DET_SIZE}, on the CPU; gives "
                    "man/woman), needs pip install insightface and the pack in "
                    f"models/insightface/models/{OFFICIAL_PACK}/. pre-aligned: the photos already are "
                    "112x112 ArcFace crops",
                ),
            ],
            outputs=[
                UNIID.Output(display_name="uniid"),
                UNIID_FACE_NET.Output(display_name="face_net"),
                UNIID_FACE_DETECTOR.Output(display_name="face_detector"),
            ],
        )

    @classmethod
    def execute(cls, uniid_name: str, face_net_name: str, backend: str) -> io.NodeOutput:
        bar = comfy.utils.ProgressBar(3)
        weights = load_uniid_weights(uniid_name, DTYPE)
        bar.update(1)
        face_net = load_face_net_choice(face_net_name)
        bar.update(1)
        detector = face_detector_spec(backend)
        bar.update(1)
        return io.NodeOutput(weights, face_net, detector)
