"""ComfyUI nodes of the UniID pack (each module one concern; this file only collects them)."""

from __future__ import annotations

from .paths import register_folders

register_folders()

from .apply import UniIDApply  # noqa: E402
from .encode import UniIDEncodeFace  # noqa: E402
from .identity_io import UniIDLoadIdentity, UniIDSaveIdentity  # noqa: E402
from .loaders import UniIDFaceDetectorLoader, UniIDFaceNetLoader, UniIDLoader  # noqa: E402
from .official import UniIDOfficialNoise, UniIDOfficialSchedule, register_ksampler_schedulers  # noqa: E402
from .text_encode import UniIDTextEncode  # noqa: E402

register_ksampler_schedulers()

NODE_CLASS_MAPPINGS = {
    "UniIDLoader": UniIDLoader,
    "UniIDFaceNetLoader": UniIDFaceNetLoader,
    "UniIDFaceDetectorLoader": UniIDFaceDetectorLoader,
    "UniIDEncodeFace": UniIDEncodeFace,
    "UniIDApply": UniIDApply,
    "UniIDSaveIdentity": UniIDSaveIdentity,
    "UniIDLoadIdentity": UniIDLoadIdentity,
    "UniIDTextEncode": UniIDTextEncode,
    "UniIDOfficialSchedule": UniIDOfficialSchedule,
    "UniIDOfficialNoise": UniIDOfficialNoise,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "UniIDLoader": "UniID Loader",
    "UniIDFaceNetLoader": "UniID Face Net Loader",
    "UniIDFaceDetectorLoader": "UniID Face Detector Loader",
    "UniIDEncodeFace": "UniID Encode Face",
    "UniIDApply": "UniID Apply",
    "UniIDSaveIdentity": "UniID Save Identity",
    "UniIDLoadIdentity": "UniID Load Identity",
    "UniIDTextEncode": "UniID Text Encode",
    "UniIDOfficialSchedule": "UniID Official Schedule",
    "UniIDOfficialNoise": "UniID Official Noise",
}
