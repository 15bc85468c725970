"""Which map blocks a depth image touches: the blocks covering its truncation band, found conservatively.

A voxel is updated from the pixel nearest to its projection, so the voxels that can get
``|depth(pixel) - z| < truncation`` from pixel ``p`` lie in p's viewing frustum (the pixel's square,
half a pixel around its centre) between depths ``d - truncation`` and ``d + truncation``. Such a piece of
frustum is convex, so the axis-aligned box of its 8 corners bounds it, and every block meeting that box
is allocated.

Doing this per pixel costs tens of ms per VGA frame on a CPU, so pixels are grouped in square tiles:
a tile whose valid depths span a small range gets one frustum piece from its minimum depth minus the
truncation to its maximum depth plus the truncation (still conservative); only tiles across depth
discontinuities, where that piece would be long and allocate many empty blocks, go pixel by pixel.
Everything is elementwise torch work on the image's device; boxes become blocks through a dense bitmap.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..types import CameraIntrinsics

#: tile side in pixels
TILE_PX = 8
#: tiles whose valid depths span more than this fraction of a block go pixel by pixel
SMOOTH_RANGE_BLOCKS = 0.5
#: largest dense scratch bitmap used to deduplicate blocks (cells; 16 MB of bool)
MAX_SCRATCH_CELLS = 1 << 24


def band_blocks(
    depth: torch.Tensor,
    valid: torch.Tensor,
    intrinsics: CameraIntrinsics,
    T_map_camera: np.ndarray,
    truncation_m: float,
    block_m: float,
) -> torch.Tensor:
    """Unique int64 (K, 3) coordinates of the blocks (side ``block_m``) the truncation band meets.

    ``depth`` float32 (H, W) metres, ``valid`` bool (H, W), both on the work device; the pose stays on
    the host (its entries are scalars in the elementwise ops).
    """
    H, W = depth.shape
    if not bool(valid.any()):
        return torch.zeros((0, 3), dtype=torch.int64, device=depth.device)
    inf = torch.tensor(float("inf"), device=depth.device)
    tile_min = -F.max_pool2d(-torch.where(valid, depth, inf)[None, None], TILE_PX, ceil_mode=True)[0, 0]
    tile_max = F.max_pool2d(torch.where(valid, depth, -inf)[None, None], TILE_PX, ceil_mode=True)[0, 0]
    has_depth = torch.isfinite(tile_max)
    smooth = has_depth & (tile_max - tile_min <= SMOOTH_RANGE_BLOCKS * block_m)

    ty, tx = smooth.nonzero(as_tuple=True)
    u0 = tx.to(torch.float32) * TILE_PX - 0.5
    v0 = ty.to(torch.float32) * TILE_PX - 0.5
    u1 = torch.clamp(u0 + TILE_PX, max=W - 0.5)
    v1 = torch.clamp(v0 + TILE_PX, max=H - 0.5)
    boxes = [_frustum_boxes(u0, u1, v0, v1, tile_min[ty, tx], tile_max[ty, tx], intrinsics, T_map_camera,
                            truncation_m, block_m)]

    rough = (has_depth & ~smooth).repeat_interleave(TILE_PX, 0)[:H].repeat_interleave(TILE_PX, 1)[:, :W]
    py, px = (rough & valid).nonzero(as_tuple=True)
    if len(py):
        d = depth[py, px]
        u, v = px.to(torch.float32), py.to(torch.float32)
        boxes.append(_frustum_boxes(u - 0.5, u + 0.5, v - 0.5, v + 0.5, d, d, intrinsics, T_map_camera,
                                    truncation_m, block_m))
    lo = torch.cat([b[0] for b in boxes])
    hi = torch.cat([b[1] for b in boxes])
    return unique_blocks_in_boxes(lo, hi)


def _frustum_boxes(
    u0: torch.Tensor, u1: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor,
    d_min: torch.Tensor, d_max: torch.Tensor,
    intrinsics: CameraIntrinsics, T_map_camera: np.ndarray, truncation_m: float, block_m: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-index boxes (lo, hi: int64 (N, 3), inclusive) around the frustum pieces of pixel rectangles.

    Piece i: rays through [u0, u1] x [v0, v1] (pixel coordinates), depth in [d_min - trunc, d_max + trunc].
    """
    near = torch.clamp(d_min - truncation_m, min=0.0) / block_m
    far = (d_max + truncation_m) / block_m
    xs = ((u0 - intrinsics.cx) / intrinsics.fx, (u1 - intrinsics.cx) / intrinsics.fx)
    ys = ((v0 - intrinsics.cy) / intrinsics.fy, (v1 - intrinsics.cy) / intrinsics.fy)
    lo, hi = [], []
    for k in range(3):
        r0, r1, r2 = (float(T_map_camera[k, j]) for j in range(3))
        ray = torch.stack([x * r0 + y * r1 + r2 for x in xs for y in ys], dim=1)  # (N, 4) world axis k
        lowest, highest = ray.min(dim=1).values, ray.max(dim=1).values
        origin = float(T_map_camera[k, 3]) / block_m
        low = torch.minimum(lowest * near, lowest * far) + origin
        high = torch.maximum(highest * near, highest * far) + origin
        lo.append(torch.floor(low))
        hi.append(torch.floor(high))
    return torch.stack(lo, dim=1).to(torch.int64), torch.stack(hi, dim=1).to(torch.int64)


def unique_blocks_in_boxes(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Unique int64 (K, 3) integer points of the inclusive boxes [lo_i, hi_i] (int64 (N, 3) each).

    Boxes are expected to be a few blocks wide; points are marked in a dense bitmap over the boxes'
    bounding box (one scatter per offset, no sort), or deduplicated with ``torch.unique`` when that
    bitmap would be too large.
    """
    base = lo.min(dim=0).values
    dims = hi.max(dim=0).values - base + 1
    span = (hi - lo).max(dim=0).values
    lo, hi = lo - base, hi - base
    nx, ny, nz = (int(v) for v in dims)
    # per axis, the box's coordinate at each step from lo (clamped at hi: narrow boxes repeat a value)
    steps = [[torch.minimum(lo[:, a] + i, hi[:, a]) for i in range(int(span[a]) + 1)] for a in range(3)]
    if nx * ny * nz <= MAX_SCRATCH_CELLS:
        grid = torch.zeros(nx * ny * nz, dtype=torch.bool, device=lo.device)
        rows = [x * (ny * nz) + y * nz for x in steps[0] for y in steps[1]]
        for row in rows:
            for z in steps[2]:
                grid[row + z] = True
        flat = grid.nonzero().squeeze(1)
        points = torch.stack([flat // (ny * nz), (flat // nz) % ny, flat % nz], dim=1)
    else:
        corners = [torch.stack([x, y, z], dim=1) for x in steps[0] for y in steps[1] for z in steps[2]]
        points = torch.unique(torch.cat(corners), dim=0)
    return points + base
