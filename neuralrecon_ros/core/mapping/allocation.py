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

from collections.abc import Callable

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
    intrinsics: CameraIntrinsics,
    T_map_camera: np.ndarray,
    truncation_m: float,
    block_m: float,
) -> torch.Tensor:
    """Unique int64 (K, 3) coordinates of the blocks (side ``block_m``) the truncation band meets.

    ``depth`` float32 (H, W) metres on the work device, ``-inf`` at invalid pixels (valid ones are > 0);
    the pose stays on the host (its entries are scalars in the elementwise ops).
    """
    H, W = depth.shape
    tile_max = _tile_reduce(depth, torch.amax, -float("inf"))
    has_depth = tile_max > -float("inf")
    if not bool(has_depth.any()):
        return torch.zeros((0, 3), dtype=torch.int64, device=depth.device)
    tile_min = _tile_reduce(depth.abs(), torch.amin, float("inf"))  # |-inf|: invalid pixels never win
    smooth = has_depth & (tile_max - tile_min <= SMOOTH_RANGE_BLOCKS * block_m)

    ty, tx = smooth.nonzero(as_tuple=True)
    u0 = tx.to(torch.float32) * TILE_PX - 0.5
    v0 = ty.to(torch.float32) * TILE_PX - 0.5
    pieces = [(u0, torch.clamp(u0 + TILE_PX, max=W - 0.5), v0, torch.clamp(v0 + TILE_PX, max=H - 0.5),
               tile_min[ty, tx], tile_max[ty, tx])]
    pixel = _rough_pixels(has_depth & ~smooth, depth)
    if len(pixel):
        d = depth.view(-1).index_select(0, pixel)
        u, v = (pixel % W).to(torch.float32), torch.div(pixel, W, rounding_mode="floor").to(torch.float32)
        pieces.append((u - 0.5, u + 0.5, v - 0.5, v + 0.5, d, d))
    u0, u1, v0, v1, d_min, d_max = (torch.cat(columns) for columns in zip(*pieces))
    lo, hi = _frustum_boxes(u0, u1, v0, v1, d_min, d_max, intrinsics, T_map_camera, truncation_m, block_m)
    return unique_blocks_in_boxes(lo, hi)


def _tile_reduce(image: torch.Tensor, reduce: Callable[..., torch.Tensor], fill: float) -> torch.Tensor:
    """``reduce`` (amin / amax) of (H, W) ``image`` over TILE_PX-square tiles (ragged edge tiles padded
    with ``fill``): (ceil(H / TILE_PX), ceil(W / TILE_PX)). Rows first: that reduction is vectorised along
    whole image rows, several times faster than a pooling kernel on one channel."""
    H, W = image.shape
    pad_h, pad_w = -H % TILE_PX, -W % TILE_PX
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=fill)
    rows = reduce(image.view(-1, TILE_PX, W + pad_w), dim=1)
    return reduce(rows.view(rows.shape[0], -1, TILE_PX), dim=2)


def _rough_pixels(rough_tiles: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Flat indices (int64) of the valid pixels (depth > 0) of the tiles flagged in ``rough_tiles``."""
    H, W = depth.shape
    ty, tx = rough_tiles.nonzero(as_tuple=True)
    if len(ty) == 0:
        return ty
    offsets = torch.arange(TILE_PX, device=depth.device)
    rows = (ty * TILE_PX)[:, None, None] + offsets[None, :, None]  # (T, TILE_PX, 1)
    cols = (tx * TILE_PX)[:, None, None] + offsets[None, None, :]  # (T, 1, TILE_PX)
    pixel = (rows * W + cols).view(-1)
    if H % TILE_PX or W % TILE_PX:  # edge tiles reach past the image
        pixel = pixel[((rows < H) & (cols < W)).view(-1)]
    return pixel[depth.view(-1).index_select(0, pixel) > 0]


def _frustum_boxes(
    u0: torch.Tensor, u1: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor,
    d_min: torch.Tensor, d_max: torch.Tensor,
    intrinsics: CameraIntrinsics, T_map_camera: np.ndarray, truncation_m: float, block_m: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-index boxes (lo, hi: int64 (3, N), inclusive; one row per axis) around the frustum pieces of
    pixel rectangles.

    Piece i: rays through [u0, u1] x [v0, v1] (pixel coordinates, u0 <= u1, v0 <= v1), depth in
    [d_min - trunc, d_max + trunc].
    """
    near = torch.clamp(d_min - truncation_m, min=0.0) / block_m
    far = (d_max + truncation_m) / block_m
    x = torch.stack([(u0 - intrinsics.cx) / intrinsics.fx, (u1 - intrinsics.cx) / intrinsics.fx])  # (2, N)
    y = torch.stack([(v0 - intrinsics.cy) / intrinsics.fy, (v1 - intrinsics.cy) / intrinsics.fy])
    R = torch.as_tensor(T_map_camera[:3, :3], dtype=torch.float32, device=x.device)
    origin = torch.as_tensor(T_map_camera[:3, 3] / block_m, dtype=torch.float32, device=x.device)[:, None]
    # the rays' world axis k, x R[k, 0] + y R[k, 1] + R[k, 2], is monotone in x and in y (rounding keeps
    # that), so its extremes over a rectangle's 4 corner rays are at the corners the signs of R[k, :2] pick
    up = (R[:, :2] >= 0).to(torch.int64)  # (3, 2): 1 where the axis grows with x (column 0) / y (column 1)
    def corner(pick: torch.Tensor) -> torch.Tensor:  # (3, N): axis k of the corner rays at ``pick`` (3, 2)
        return (x.index_select(0, pick[:, 0]) * R[:, 0, None] + y.index_select(0, pick[:, 1]) * R[:, 1, None]
                + R[:, 2, None])

    lowest, highest = corner(1 - up), corner(up)
    lo = torch.minimum(lowest * near, lowest * far).add_(origin).floor_()
    hi = torch.maximum(highest * near, highest * far).add_(origin).floor_()
    return lo.to(torch.int64), hi.to(torch.int64)


def unique_blocks_in_boxes(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Unique int64 (K, 3) integer points of the inclusive boxes [lo_i, hi_i] (int64 (3, N) each: one row
    per axis).

    Boxes are expected to be a few blocks wide; points are marked in a dense bitmap over the boxes'
    bounding box (one scatter, no sort), or deduplicated with ``torch.unique`` when that bitmap would be
    too large.
    """
    # neighbouring pixels often give the same box: drop repeats of the previous box first
    repeat = ((lo[:, 1:] == lo[:, :-1]) & (hi[:, 1:] == hi[:, :-1])).all(dim=0)
    keep = torch.cat([torch.ones(1, dtype=torch.bool, device=lo.device), ~repeat]).nonzero().squeeze(1)
    lo, hi = lo.index_select(1, keep), hi.index_select(1, keep)
    base = lo.amin(dim=1, keepdim=True)
    lo, hi = lo - base, hi - base
    nx, ny, nz, *span = (torch.cat([hi.amax(dim=1) + 1, (hi - lo).amax(dim=1)]).tolist())

    def steps(axis: int) -> torch.Tensor:
        """(S, N): box i's coordinate on ``axis`` at each step from lo (clamped at hi: narrow boxes repeat)."""
        offsets = torch.arange(span[axis] + 1, device=lo.device)[:, None]
        return torch.minimum(lo[axis] + offsets, hi[axis])

    if nx * ny * nz <= MAX_SCRATCH_CELLS:
        flat = ((steps(0) * (ny * nz))[:, None, None] + (steps(1) * nz)[None, :, None]) + steps(2)[None, None]
        grid = torch.zeros(nx * ny * nz, dtype=torch.bool, device=lo.device)
        grid.index_fill_(0, flat.view(-1), True)
        flat = grid.nonzero().squeeze(1)
        points = torch.stack([flat // (ny * nz), (flat // nz) % ny, flat % nz], dim=1)
    else:
        x, y, z = (steps(axis) for axis in range(3))
        corners = torch.stack(torch.broadcast_tensors(x[:, None, None], y[None, :, None], z[None, None]), dim=-1)
        points = torch.unique(corners.view(-1, 3), dim=0)
    return points + base.T
