"""UniIDEncodeFace: reference photos -> an identity (tokens of both branches), aligned preview, class word.

Which photos gave a face, and why the others were left out, is shown on the node (ComfyUI's progress
text), kept in the prompt's history (the node's text output) and written to the log.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
import torch
from comfy_api.v0_0_2 import io, ui

from uniid_core.face.references import ON_NO_FACE, SELECT_MODES, PreparedFaces, prepare_faces
from uniid_core.identity import COMBINE_MODES, PER_IMAGE, encode_identity

from .schema import CATEGORY, UniIDNode
from .sockets import (
    UNIID,
    UNIID_FACE_DETECTOR,
    UNIID_FACE_NET,
    UNIID_IDENTITY,
    FaceDetectorSpec,
    FaceNet,
    UniIDWeights,
)

LOG = logging.getLogger("UniID")
BY_INDEX = "index"


def report_faces(prepared: PreparedFaces, node_id: str | None) -> str:
    """Log the per-photo summary (a warning when photos were skipped) and show it on the node."""
    text = prepared.summary()
    LOG.log(logging.WARNING if prepared.skipped else logging.INFO, "UniID Encode Face: %s", text)
    if node_id is not None:
        from server import PromptServer

        server = getattr(PromptServer, "instance", None)
        if server is not None:
            server.send_progress_text(text, node_id)
    return text


class UniIDEncodeFace(UniIDNode):
    """Detect, align and encode the face(s) in an IMAGE batch into one UniID identity (or one per photo)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniIDEncodeFace",
            display_name="UniID Encode Face",
            category=CATEGORY,
            description="Turns reference photos into a UniID identity.",
            inputs=[
                UNIID.Input("uniid", tooltip="UniID weights from UniID Loader"),
                UNIID_FACE_NET.Input("face_net", tooltip="IResNet-100 face net from UniID Face Net Loader"),
                UNIID_FACE_DETECTOR.Input(
                    "face_detector", tooltip="Detector from UniID Face Detector Loader"
                ),
                io.Image.Input(
                    "image",
                    tooltip="One or more photos of the same person (a batch); with combine = per_image, one "
                    "photo per identity",
                ),
                io.Combo.Input(
                    "face_selection",
                    options=[*SELECT_MODES, BY_INDEX],
                    tooltip="Which face to use when a photo shows several: the largest box, the most "
                    "confident detection, or face_index",
                ),
                io.Int.Input(
                    "face_index",
                    default=0,
                    min=-16,
                    max=16,
                    tooltip="With face_selection=index: 0 = leftmost face, -1 = rightmost",
                ),
                io.Combo.Input(
                    "combine",
                    options=list(COMBINE_MODES),
                    tooltip="Several photos: average the face features before UniID (default) or average "
                    "UniID's output tokens; per_image makes an identity batch, one identity per photo in "
                    "batch order, for a latent batch of the same size (UniID Apply gives identity i to "
                    "latent i)",
                ),
                io.Combo.Input(
                    "on_no_face",
                    options=list(ON_NO_FACE),
                    tooltip="A photo without a face stops the run (error) or is left out (skip)",
                ),
                io.String.Input(
                    "class_word",
                    default="auto",
                    tooltip="Word for <class word> in prompts; auto = man/woman from insightface, else "
                    "person",
                ),
            ],
            outputs=[
                UNIID_IDENTITY.Output(display_name="identity"),
                io.Image.Output(display_name="aligned_faces"),
                io.String.Output(display_name="class_word"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls,
        uniid: UniIDWeights,
        face_net: FaceNet,
        face_detector: FaceDetectorSpec,
        image: torch.Tensor,
        face_selection: str,
        face_index: int,
        combine: str,
        on_no_face: str,
        class_word: str,
    ) -> io.NodeOutput:
        bar = comfy.utils.ProgressBar(3)
        select = face_index if face_selection == BY_INDEX else face_selection
        pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        prepared = prepare_faces(
            list(pixels),
            face_detector.get(),
            select=select,
            on_no_face=on_no_face,
            class_word=class_word,
            unanimous_class_word=combine == PER_IMAGE,
        )
        summary = report_faces(prepared, cls.hidden.unique_id if cls.hidden is not None else None)
        bar.update(1)
        comfy.model_management.load_models_gpu(
            [uniid.encoder_patcher(), face_net.patcher()], force_full_load=True
        )
        with torch.no_grad():
            identity = encode_identity(
                uniid.model, face_net.net, prepared.tensor, class_word=prepared.class_word, combine=combine
            )
        identity = identity.to("cpu", torch.float32)
        bar.update(1)
        preview = torch.from_numpy(prepared.preview()).float()
        bar.update(1)
        return io.NodeOutput(identity, preview, prepared.class_word, ui=ui.PreviewText(summary))
