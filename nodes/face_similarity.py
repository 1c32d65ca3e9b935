"""UniIDFaceSimilarity: how much each image's face looks like the reference person (uniid_core.similarity).

Scores come from our face net (the one that made the identity) or, so that the net that conditioned is not
the only judge, from an insightface ArcFace recognition model in models/insightface. An image without a
face gets NaN and a reason in the table; it never stops the run.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
import torch
from comfy_api.v0_0_2 import io, ui

from uniid_core.errors import UniIDError
from uniid_core.face.providers import PROVIDERS, available_providers
from uniid_core.face.recognition import FaceEmbedder, FaceNetEmbedder, OnnxFaceEmbedder
from uniid_core.face.references import SELECT_MODES
from uniid_core.similarity import Reference, score_images

from . import paths
from .schema import CATEGORY, UniIDNode
from .sockets import UNIID_FACE_DETECTOR, UNIID_FACE_NET, UNIID_IDENTITY, FaceDetectorSpec, FaceNet

LOG = logging.getLogger("UniID")
FACE_NET_SCORER = "face_net"
"""The scorer choice meaning the face net on the face_net input (any other choice is an .onnx file)."""


def _embedder(scorer: str, face_net: FaceNet | None, provider: str) -> FaceEmbedder:
    """The recognition net that scores: our face net under ComfyUI's model management, or an ONNX model."""
    if scorer == FACE_NET_SCORER:
        if face_net is None:
            raise UniIDError(
                "scorer = face_net needs the face net: connect face_net (UniID Face Net Loader or UniID "
                "Loader (all-in-one)), or pick an insightface recognition model as the scorer"
            )
        comfy.model_management.load_models_gpu([face_net.patcher()], force_full_load=True)
        return FaceNetEmbedder(face_net.net)
    if not available_providers():
        raise UniIDError(
            f"scoring with {scorer} needs onnxruntime, which is not installed or does not import: pip "
            "install onnxruntime (onnxruntime-gpu for CUDA), or choose scorer = face_net"
        )
    return OnnxFaceEmbedder(paths.resolve_insightface_file(scorer), provider)


def _reference(
    identity: object | None,
    photos: torch.Tensor | None,
    embedder: FaceEmbedder,
    detector: object,
    select: str,
) -> Reference:
    """The person to compare with: the reference photos when connected, else the identity's embedding."""
    if photos is not None:
        return Reference.from_photos(photos, embedder, detector, select)
    if identity is None:
        raise UniIDError(
            "connect the reference: an identity (from UniID Encode Face) or reference_photos of the person"
        )
    reference = Reference.from_identity(identity)
    if reference.kind != embedder.kind:
        raise UniIDError(
            f"an identity holds our face net's embedding, which {embedder.name} cannot be compared with: "
            "connect reference_photos (the photos the identity was made from) to score with it, or choose "
            "scorer = face_net"
        )
    return reference


class UniIDFaceSimilarity(UniIDNode):
    """Score a batch of images against the reference person; rank them and pick the best."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDFaceSimilarity",
            display_name="UniID Face Similarity",
            category=CATEGORY,
            description="Identity similarity of every image to the reference person (cosine of "
            "face-recognition embeddings), the images ranked best first, and the best one.",
            inputs=[
                io.Image.Input("images", tooltip="The images to score, e.g. a batch from VAE Decode"),
                UNIID_FACE_DETECTOR.Input(
                    "face_detector",
                    tooltip="Finds the face in every image (and in reference_photos): from UniID Face "
                    "Detector Loader or UniID Loader (all-in-one)",
                ),
                io.Combo.Input(
                    "scorer",
                    options=[FACE_NET_SCORER, *paths.recognition_model_choices()],
                    default=FACE_NET_SCORER,
                    tooltip="Recognition net that judges: face_net (the net on the face_net input, the one "
                    "UniID conditions on) or an insightface ArcFace model (.onnx under models/insightface, "
                    "e.g. buffalo_l/w600k_r50.onnx; needs onnxruntime and reference_photos), an "
                    "independent judge",
                ),
                io.Combo.Input(
                    "face_selection",
                    options=list(SELECT_MODES),
                    tooltip="Which face of an image is scored when it shows several: the largest box or the "
                    "most confident detection",
                ),
                io.Combo.Input(
                    "provider",
                    options=list(PROVIDERS),
                    tooltip="onnxruntime accelerator for an insightface scorer (the face net runs where "
                    "ComfyUI puts models)",
                ),
                UNIID_FACE_NET.Input(
                    "face_net",
                    optional=True,
                    tooltip="The IResNet-100 face net; needed for scorer = face_net",
                ),
                UNIID_IDENTITY.Input(
                    "identity",
                    optional=True,
                    tooltip="The reference: an identity from UniID Encode Face (scored with face_net); "
                    "reference_photos take its place when connected",
                ),
                io.Image.Input(
                    "reference_photos",
                    optional=True,
                    tooltip="The reference as photos of the person (a batch); used instead of the identity "
                    "when connected, and needed for an insightface scorer",
                ),
            ],
            outputs=[
                io.Float.Output(
                    display_name="similarity",
                    is_output_list=True,
                    tooltip="One cosine similarity per image, in input order (1 = same direction); NaN "
                    "where no face was found",
                ),
                io.String.Output(display_name="table", tooltip="The scores as a table, best first"),
                io.Image.Output(
                    display_name="images_by_similarity",
                    tooltip="The images sorted best first (images without a face last)",
                ),
                io.Image.Output(display_name="best_image", tooltip="The most similar image"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        images: torch.Tensor,
        face_detector: FaceDetectorSpec,
        scorer: str,
        face_selection: str,
        provider: str,
        face_net: FaceNet | None = None,
        identity=None,
        reference_photos: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        photos = 0 if reference_photos is None else reference_photos.shape[0]
        bar = comfy.utils.ProgressBar(photos + images.shape[0])
        embedder = _embedder(scorer, face_net, provider)
        detector = face_detector.get()
        reference = _reference(identity, reference_photos, embedder, detector, face_selection)
        bar.update(photos)
        report = score_images(
            images, reference, embedder, detector, select=face_selection, on_image=lambda: bar.update(1)
        )
        table = report.table()
        notes = "\n".join(f"reference {note}" for note in reference.notes)
        if notes:
            table = f"{table}\n{notes}"
        LOG.info("UniID Face Similarity:\n%s", table)
        order = report.order
        ranked = images[order]
        return io.NodeOutput(report.values, table, ranked, ranked[:1], ui=ui.PreviewText(table))
