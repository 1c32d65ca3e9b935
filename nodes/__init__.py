"""ComfyUI nodes of the UniID pack (V3 schema; each module one concern, this file only collects them).

ComfyUI calls ``comfy_entrypoint`` when it loads the pack: it registers the model folders and the
official KSampler schedules, and returns the extension that lists the nodes.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .apply import UniIDApply
from .apply_simple import UniIDApplySimple
from .encode import UniIDEncodeFace
from .face_similarity import UniIDFaceSimilarity
from .identity_batch import UniIDIdentityBatch
from .identity_io import UniIDLoadIdentity, UniIDSaveIdentity
from .loader_all_in_one import UniIDLoaderAllInOne
from .loaders import UniIDFaceDetectorLoader, UniIDFaceNetLoader, UniIDLoader
from .official import UniIDOfficialNoise, UniIDOfficialSchedule, register_ksampler_schedulers
from .paths import register_folders
from .rescaler import UniIDRescaler, UniIDRescalerPerBlock
from .text_encode import UniIDTextEncode

NODES: list[type[io.ComfyNode]] = [
    UniIDLoader,
    UniIDFaceNetLoader,
    UniIDFaceDetectorLoader,
    UniIDEncodeFace,
    UniIDApply,
    UniIDRescaler,
    UniIDRescalerPerBlock,
    UniIDSaveIdentity,
    UniIDLoadIdentity,
    UniIDTextEncode,
    UniIDOfficialSchedule,
    UniIDOfficialNoise,
    UniIDLoaderAllInOne,
    UniIDApplySimple,
    UniIDFaceSimilarity,
    UniIDIdentityBatch,
]


class UniIDExtension(ComfyExtension):
    """The UniID node pack as a ComfyUI extension."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """Every UniID node class (ids, inputs and outputs in their schemas)."""
        return list(NODES)


async def comfy_entrypoint() -> UniIDExtension:
    """ComfyUI's entry point for a V3 pack: set up folders and schedulers, then hand over the nodes."""
    register_folders()
    register_ksampler_schedulers()
    return UniIDExtension()
