"""2D backbone: MnasNet-1.0 trunk (first 11 layers) plus a small FPN, facts §2.2.

Module names and shapes follow upstream's ``MnasMulti`` built from torchvision's MNASNet (no
torchvision needed): ``conv0`` = MNASNet layers 0-8 (stride 4, 24 ch), ``conv1`` = layer 9 (stride 8,
40 ch), ``conv2`` = layer 10 (stride 16, 80 ch), then ``out1/inner1/out2/inner2/out3``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# torchvision's MNASNet batch-norm momentum (only matters when training)
_BN_MOMENTUM = 1 - 0.9997


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: 1x1 expand, depthwise kxk, 1x1 project (``layers.0..7``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.apply_residual = in_ch == out_ch and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size, padding=kernel_size // 2, stride=stride, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch, momentum=_BN_MOMENTUM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) + x if self.apply_residual else self.layers(x)


def _stack(in_ch: int, out_ch: int, kernel_size: int, stride: int, expansion: int, repeats: int) -> nn.Sequential:
    """``repeats`` blocks; only the first changes channels and stride."""
    blocks = [InvertedResidual(in_ch, out_ch, kernel_size, stride, expansion)]
    blocks += [InvertedResidual(out_ch, out_ch, kernel_size, 1, expansion) for _ in range(repeats - 1)]
    return nn.Sequential(*blocks)


class MnasMulti(nn.Module):
    """Feature pyramid at strides 4, 8, 16 with 24, 40, 80 channels (alpha = 1.0)."""

    #: output channels in return order (fine, mid, coarse)
    out_channels = (24, 40, 80)

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(32, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
            nn.BatchNorm2d(32, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, 1, bias=False),
            nn.BatchNorm2d(16, momentum=_BN_MOMENTUM),
            _stack(16, 24, 3, 2, 3, 3),
        )
        self.conv1 = _stack(24, 40, 5, 2, 3, 3)
        self.conv2 = _stack(40, 80, 5, 2, 6, 3)
        self.out1 = nn.Conv2d(80, 80, 1, bias=False)
        self.inner1 = nn.Conv2d(40, 80, 1, bias=True)
        self.inner2 = nn.Conv2d(24, 80, 1, bias=True)
        self.out2 = nn.Conv2d(80, 40, 3, padding=1, bias=False)
        self.out3 = nn.Conv2d(80, 24, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (B, 3, H, W) normalised image -> [stride 4 (24 ch), stride 8 (40 ch), stride 16 (80 ch)]."""
        conv0 = self.conv0(x)
        conv1 = self.conv1(conv0)
        conv2 = self.conv2(conv1)
        coarse = self.out1(conv2)
        intra = F.interpolate(conv2, scale_factor=2, mode="nearest") + self.inner1(conv1)
        mid = self.out2(intra)
        # inner2 joins the upsampled pre-out2 sum, not ``mid`` (facts §2.2)
        intra = F.interpolate(intra, scale_factor=2, mode="nearest") + self.inner2(conv0)
        fine = self.out3(intra)
        return [fine, mid, coarse]
