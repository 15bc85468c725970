"""Back-projection of 2D feature maps into fragment voxels (facts §2.3).

Each voxel is projected into every view; a view counts when the voxel lands inside the image
(normalised coordinates within [-1, 1]) in front of the camera. Features are bilinearly sampled
(``align_corners=True``) and averaged over the valid views; a normalised mean depth is appended as
the last channel. Projection uses the float32 recipe of :mod:`.projection` so that view validity
matches upstream exactly, also for voxels a hair from the image border.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .projection import affine_f32, voxel_positions_f32


@dataclass
class BackProjection:
    features: torch.Tensor  # (N, C + 1) float32: mean feature over valid views, then normalised depth
    count: torch.Tensor  # (N,) int64: number of valid views per voxel
    valid: torch.Tensor  # (V, N) bool: view v sees voxel n


def _normalised(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(V, N, 2) normalised image coordinates 2 * (x / z) / (W - 1) - 1 of (V, N, 3) (x*z, y*z, z) rows."""
    z = image[..., 2]
    return torch.stack([2 * (image[..., 0] / z) / (width - 1) - 1, 2 * (image[..., 1] / z) / (height - 1) - 1], -1)


def back_project(coords: torch.Tensor, vol_origin_partial: torch.Tensor, voxel_size: float,
                 feats: torch.Tensor, proj: torch.Tensor) -> BackProjection:
    """Sample ``feats`` (V, C, H, W) at voxels ``coords`` (N, 3) int, local units of ``voxel_size``.

    ``proj`` (V, 4, 4) float32 maps world points to (u*z, v*z, z) in pixels of ``feats``.
    """
    n_views, channels, height, width = feats.shape
    world = voxel_positions_f32(coords, voxel_size, vol_origin_partial)
    # Validity: the float32 recipe, which decides every voxel-view a hair from the border as upstream did.
    image = affine_f32(proj[:, :3, :], world)  # (V, N, 3)
    valid = (_normalised(image, width, height).abs() <= 1).all(dim=-1) & (image[..., 2] > 0)
    # Sampling positions and depths: upstream's batched (V, 4, 4) @ (V, 4, N) product of homogeneous points.
    # Its round-off (the GEMM's, not the recipe's) moves sampled features by up to ~1e-4 at O(100) values,
    # which reached the level-2 TSDF as ~4e-5 (parity fixture: 10x less with upstream's product).
    homogeneous = torch.cat([world.t(), world.new_ones((1, world.shape[0]))]).expand(n_views, 4, -1).contiguous()
    image = torch.bmm(proj.contiguous(), homogeneous)[:, :3].transpose(1, 2)  # (V, N, 3)
    z = image[..., 2]
    grid = _normalised(image, width, height)

    sampled = F.grid_sample(feats, grid.unsqueeze(1).to(feats.dtype), padding_mode="zeros", align_corners=True)
    sampled = sampled.view(n_views, channels, -1)
    # where() rather than a product: invalid views may have sampled NaN (z = 0)
    sampled = torch.where(valid.unsqueeze(1), sampled, sampled.new_zeros(()))
    z = torch.where(valid, z, z.new_zeros(()))

    count = valid.sum(dim=0)
    divisor = count.clamp(min=1)
    features = (sampled.sum(dim=0) / divisor).t()
    mean_z = z.sum(dim=0) / divisor
    seen = mean_z > 0
    depth = torch.zeros_like(mean_z)
    if bool(seen.any()):
        centre = mean_z[seen].mean()
        spread = torch.linalg.vector_norm(mean_z[seen] - centre) + 1e-5  # an L2 norm, not a std (facts §2.3)
        depth = torch.where(seen, (mean_z - centre) / spread, depth)
    return BackProjection(torch.cat([features, depth.unsqueeze(1)], dim=1), count, valid)
