"""UniID networks: the IResNet face net, the text branch, the adapter branch and the combined model."""

from .adapter_branch import AdapterBranch
from .iresnet import FaceFeatures, FaceRecognitionNet, iresnet100
from .perceiver import FeedForward, PerceiverAttention
from .text_branch import TextBranch
from .uniid import UniIDConfig, UniIDModel, weights_fingerprint

__all__ = [
    "AdapterBranch",
    "FaceFeatures",
    "FaceRecognitionNet",
    "FeedForward",
    "PerceiverAttention",
    "TextBranch",
    "UniIDConfig",
    "UniIDModel",
    "iresnet100",
    "weights_fingerprint",
]
