"""IResNet face-recognition network with insightface/arcface_torch parameter names.

The key names and module layout match the Partial-FC ``backbone.pth`` files so those state dicts load
strictly; the forward pass also returns the four stage feature maps that UniID's branches read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

IRESNET100_BLOCKS = (3, 13, 30, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
EMBEDDING_DIM = 512
BN_EPS = 1e-5
# Stage map sizes of a 112x112 input: every stage halves the resolution (first conv keeps it).
HIDDEN_SHAPES = ((64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7))


@dataclass(eq=False)  # holds tensors: no elementwise == between instances
class FaceFeatures:
    """Face-net outputs: the 512-d embedding (not L2-normalised) and stage maps H1..H4 (H4 before bn2)."""

    embedding: Tensor
    hidden_states: tuple[Tensor, Tensor, Tensor, Tensor]

    @property
    def batch_size(self) -> int:
        """Number of faces held."""
        return self.embedding.shape[0]

    @classmethod
    def zeros(
        cls, batch: int = 1, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> FaceFeatures:
        """All-zero IResNet-100 features for ``batch`` faces, without running the network."""
        return cls(
            torch.zeros(batch, EMBEDDING_DIM, device=device, dtype=dtype),
            tuple(torch.zeros(batch, *shape, device=device, dtype=dtype) for shape in HIDDEN_SHAPES),
        )

    def mean(self) -> FaceFeatures:
        """Average over the batch (kept as a batch of one), computed in float32 for accuracy."""

        def avg(t: Tensor) -> Tensor:
            return t.float().mean(dim=0, keepdim=True).to(t.dtype)

        return FaceFeatures(avg(self.embedding), tuple(avg(h) for h in self.hidden_states))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FaceFeatures:
        """Copy to another device and/or floating dtype."""
        return FaceFeatures(
            self.embedding.to(device=device, dtype=dtype),
            tuple(h.to(device=device, dtype=dtype) for h in self.hidden_states),
        )


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv, BN, PReLU, strided conv, BN (+ projected shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=BN_EPS),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class FaceRecognitionNet(nn.Module):
    """IResNet (arcface_torch layout): returns the embedding and the four stage maps as FaceFeatures."""

    def __init__(self, blocks: tuple[int, int, int, int] = IRESNET100_BLOCKS) -> None:
        super().__init__()
        self.blocks = tuple(blocks)
        self.conv1 = _conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        in_ch = STAGE_WIDTHS[0]
        for index, (width, count) in enumerate(zip(STAGE_WIDTHS, self.blocks, strict=True), start=1):
            rest = [IBasicBlock(width, width) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(IBasicBlock(in_ch, width, stride=2), *rest))
            in_ch = width
        self.bn2 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(in_ch * 7 * 7, EMBEDDING_DIM)
        self.features = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: Tensor) -> FaceFeatures:
        """Embed aligned faces ``(B, 3, 112, 112)`` in [-1, 1]."""
        x = self.prelu(self.bn1(self.conv1(x)))
        hidden = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            hidden.append(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return FaceFeatures(self.features(self.fc(x)), tuple(hidden))


def iresnet100() -> FaceRecognitionNet:
    """The IResNet-100 UniID was trained with (blocks [3, 13, 30, 3])."""
    return FaceRecognitionNet(IRESNET100_BLOCKS)
