"""UniIDEncodeFace: reference photos -> an identity (tokens of both branches), aligned preview, class word."""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import torch

from uniid_core.face.references import prepare_faces
from uniid_core.identity import encode_identity

from .bundle import UniIDWeights
from .loaders import CATEGORY, FaceDetectorSpec, FaceNet


class UniIDEncodeFace:
    """Detect, align and encode the face(s) in an IMAGE batch into one UniID identity."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "uniid": ("UNIID", {"tooltip": "UniID weights from UniID Loader"}),
                "face_net": (
                    "UNIID_FACE_NET",
                    {"tooltip": "IResNet-100 face net from UniID Face Net Loader"},
                ),
                "face_detector": (
                    "UNIID_FACE_DETECTOR",
                    {"tooltip": "Detector from UniID Face Detector Loader"},
                ),
                "image": ("IMAGE", {"tooltip": "One or more photos of the same person (a batch)"}),
                "face_selection": (
                    ["largest", "score", "index"],
                    {
                        "tooltip": "Which face to use when a photo shows several: the largest box, the most "
                        "confident detection, or face_index"
                    },
                ),
                "face_index": (
                    "INT",
                    {
                        "default": 0,
                        "min": -16,
                        "max": 16,
                        "tooltip": "With face_selection=index: 0 = leftmost face, -1 = rightmost",
                    },
                ),
                "combine": (
                    ["mean_features", "mean_tokens"],
                    {
                        "tooltip": "Several photos: average the face features before UniID (default) or "
                        "average UniID's output tokens"
                    },
                ),
                "on_no_face": (
                    ["error", "skip"],
                    {"tooltip": "A photo without a face stops the run (error) or is left out (skip)"},
                ),
                "class_word": (
                    "STRING",
                    {
                        "default": "auto",
                        "tooltip": "Word for <class word> in prompts; auto = man/woman from "
                        "insightface, else person",
                    },
                ),
            }
        }

    RETURN_TYPES = ("UNIID_IDENTITY", "IMAGE", "STRING")
    RETURN_NAMES = ("identity", "aligned_faces", "class_word")
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Turns reference photos into a UniID identity."

    def encode(
        self,
        uniid: UniIDWeights,
        face_net: FaceNet,
        face_detector: FaceDetectorSpec,
        image: torch.Tensor,
        face_selection: str,
        face_index: int,
        combine: str,
        on_no_face: str,
        class_word: str,
    ) -> tuple:
        bar = comfy.utils.ProgressBar(3)
        select = face_index if face_selection == "index" else face_selection
        pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        prepared = prepare_faces(
            list(pixels), face_detector.get(), select=select, on_no_face=on_no_face, class_word=class_word
        )
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
        return (identity, preview, prepared.class_word)
