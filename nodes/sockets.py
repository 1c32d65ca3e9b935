"""The UniID socket types, each declared once for ComfyUI's V3 schema next to the object it carries.

UNIID carries loaded weights (UniIDWeights), UNIID_IDENTITY an identity (uniid_core.identity.Identity),
UNIID_FACE_NET the face-recognition net (FaceNet), UNIID_FACE_DETECTOR a detector choice
(FaceDetectorSpec) and UNIID_RESCALER how the identity attention is added (uniid_core.rescaler.Rescaler:
strategy, its parameters, per-layer weights).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import comfy.model_patcher
import torch
from comfy_api.v0_0_2 import io

from uniid_core.errors import UniIDError
from uniid_core.face.detect import make_detector
from uniid_core.precision import DTYPES

from .managed import EncoderModules, IPProjections, managed

UNIID = io.Custom("UNIID")
UNIID_IDENTITY = io.Custom("UNIID_IDENTITY")
UNIID_FACE_NET = io.Custom("UNIID_FACE_NET")
UNIID_FACE_DETECTOR = io.Custom("UNIID_FACE_DETECTOR")
UNIID_RESCALER = io.Custom("UNIID_RESCALER")


@dataclass
class UniIDWeights:
    """A loaded UniID model, its face encoders' ModelPatcher and, per compute dtype, its ip projections'."""

    model: object
    source: str
    dtype_choice: str = "auto"
    _patchers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def encoder_patcher(self) -> comfy.model_patcher.ModelPatcher:
        """ModelPatcher of the face encoders (both branches without the ip projections), made once."""
        with self._lock:
            patcher = self._patchers.get("encoders")
            if patcher is None:
                patcher = managed(EncoderModules(self.model))
                self._patchers["encoders"] = patcher
        return patcher

    @property
    def fingerprint(self) -> str:
        """The loaded weights' fingerprint (identities remember it)."""
        return self.model.fingerprint

    def ip_patcher(self, unet_dtype: torch.dtype) -> comfy.model_patcher.ModelPatcher:
        """ModelPatcher of the ip projections in the chosen dtype (or the UNet's for "auto"), cached."""
        branch = self.model.adapter_branch
        if branch is None:
            raise UniIDError(f"{self.source} holds no adapter branch; load weights that include adapter_ckpt")
        dtype = DTYPES.get(self.dtype_choice, unet_dtype)
        with self._lock:
            patcher = self._patchers.get(dtype)
            if patcher is None:
                patcher = managed(IPProjections(branch.ip_weights(), dtype))
                self._patchers[dtype] = patcher
        return patcher


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


@dataclass
class FaceDetectorSpec:
    """A face detector choice on the UNIID_FACE_DETECTOR socket; the detector is built on first use."""

    backend: str
    settings: dict = field(default_factory=dict)
    _detector: object = None

    def get(self) -> object:
        """The detector, built once (the backend's packages are imported only here)."""
        if self._detector is None:
            self._detector = make_detector(self.backend, **self.settings)
        return self._detector
