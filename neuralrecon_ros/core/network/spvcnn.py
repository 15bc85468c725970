"""SPVCNN: the per-level point-voxel 3D network (facts §2.5), upstream module names and shapes."""

from __future__ import annotations

import torch
from torch import nn

from .sparse import (
    PointTensor,
    SparseBatchNorm,
    SparseConv3d,
    SparseReLU,
    SparseTensor,
    initial_voxelize,
    point_to_voxel,
    sparse_cat,
    voxel_to_point,
)

#: channel widths at cr = 1 (level 0); level i uses them divided by 2**i
BASE_WIDTHS = (32, 64, 128, 96, 96)


class BasicConvolutionBlock(nn.Module):
    """Sparse conv -> BN -> ReLU (``net.0/1/2``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 transposed: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            SparseConv3d(in_ch, out_ch, kernel_size, stride, transposed), SparseBatchNorm(out_ch), SparseReLU(True)
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.net(x)


class BasicDeconvolutionBlock(BasicConvolutionBlock):
    """Transposed kernel-2 stride-2 conv -> BN -> ReLU: back onto the voxels of the matching down conv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size=2, stride=2, transposed=True)


class ResidualBlock(nn.Module):
    """[k3 conv, BN, ReLU, k3 conv, BN] + shortcut (identity, or k1 conv + BN when widths differ), ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            SparseConv3d(in_ch, out_ch, 3),
            SparseBatchNorm(out_ch),
            SparseReLU(True),
            SparseConv3d(out_ch, out_ch, 3),
            SparseBatchNorm(out_ch),
        )
        shortcut = [] if in_ch == out_ch else [SparseConv3d(in_ch, out_ch, 1), SparseBatchNorm(out_ch)]
        self.downsample = nn.Sequential(*shortcut)  # empty Sequential = identity
        self.relu = SparseReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.net(x)
        return self.relu(out.replace_feats(out.feats + self.downsample(x).feats))


class SPVCNN(nn.Module):
    """Voxelise points at ``voxel_size``, U-Net over strides 1-2-4 with a point branch; returns point
    features (P, widths[4])."""

    def __init__(self, in_channels: int, level: int, voxel_size: float) -> None:
        super().__init__()
        cs = [w // 2**level for w in BASE_WIDTHS]
        self.voxel_size = voxel_size
        self.stem = nn.Sequential(SparseConv3d(in_channels, cs[0], 3), SparseBatchNorm(cs[0]), SparseReLU(True))
        self.stage1 = nn.Sequential(
            BasicConvolutionBlock(cs[0], cs[0], kernel_size=2, stride=2),
            ResidualBlock(cs[0], cs[1]),
            ResidualBlock(cs[1], cs[1]),
        )
        self.stage2 = nn.Sequential(
            BasicConvolutionBlock(cs[1], cs[1], kernel_size=2, stride=2),
            ResidualBlock(cs[1], cs[2]),
            ResidualBlock(cs[2], cs[2]),
        )
        self.up1 = nn.ModuleList([
            BasicDeconvolutionBlock(cs[2], cs[3]),
            nn.Sequential(ResidualBlock(cs[3] + cs[1], cs[3]), ResidualBlock(cs[3], cs[3])),
        ])
        self.up2 = nn.ModuleList([
            BasicDeconvolutionBlock(cs[3], cs[4]),
            nn.Sequential(ResidualBlock(cs[4] + cs[0], cs[4]), ResidualBlock(cs[4], cs[4])),
        ])
        self.point_transforms = nn.ModuleList([
            nn.Sequential(nn.Linear(cs[0], cs[2]), nn.BatchNorm1d(cs[2]), nn.ReLU(True)),
            nn.Sequential(nn.Linear(cs[2], cs[4]), nn.BatchNorm1d(cs[4]), nn.ReLU(True)),
        ])

    def forward(self, z: PointTensor) -> torch.Tensor:
        """``z``: points in metres (aligned frame) with features; ``z.coords`` is rescaled in place."""
        x0 = self.stem(initial_voxelize(z, self.voxel_size))
        z0 = z.replace_feats(voxel_to_point(x0, z))
        x1 = self.stage1(point_to_voxel(x0, z0))
        x2 = self.stage2(x1)
        z1 = z0.replace_feats(voxel_to_point(x2, z0) + self.point_transforms[0](z0.feats))
        y3 = self.up1[0](point_to_voxel(x2, z1))
        y3 = self.up1[1](sparse_cat([y3, x1]))
        y4 = self.up2[0](y3)
        y4 = self.up2[1](sparse_cat([y4, x0]))
        return voxel_to_point(y4, z1) + self.point_transforms[1](z1.feats)
