"""TSDFMap internals made fast for issue 15, checked against independent references: the fused projective
update against a dense numpy evaluation of the same rule (odd image sizes, voxels behind the camera, invalid
depth), the block index against a dict under random allocation and removal, and removal's cost bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.keys import pack_keys
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.types import CameraIntrinsics

VS = 0.04
TRUNC = 3 * VS
B = 8


def dense_reference(depth: np.ndarray, K: CameraIntrinsics, T: np.ndarray, grid: np.ndarray, color: np.ndarray,
                    min_depth: float, max_depth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-observation (update mask, TSDF, colour) of voxels ``grid`` by the documented rule, in float32
    like the map: camera coordinates from the block origin (float64) plus the local offset, nearest pixel."""
    blocks = np.floor_divide(grid, B)
    R, t = T[:3, :3], T[:3, 3]
    origin = ((blocks * (B * VS)).astype(np.float64) - t) @ R
    local = ((grid - blocks * B).astype(np.float64) * VS) @ R
    p = origin.astype(np.float32) + local.astype(np.float32)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    in_front = z > 1e-6
    z_safe = np.where(in_front, z, np.float32(1.0))
    u = np.floor(x / z_safe * np.float32(K.fx) + np.float32(K.cx + 0.5))
    v = np.floor(y / z_safe * np.float32(K.fy) + np.float32(K.cy + 0.5))
    inside = in_front & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    row, col = np.clip(v, 0, K.height - 1).astype(int), np.clip(u, 0, K.width - 1).astype(int)
    d = depth[row, col]
    valid = (d >= min_depth) & (d <= max_depth) & (d > 0)
    sdf = d - z
    update = inside & valid & (sdf >= -TRUNC)
    tsdf = np.minimum(sdf / np.float32(TRUNC), 1.0).astype(np.float32)
    return update, tsdf, color[row, col]


@pytest.mark.parametrize("size", [(157, 117), (160, 120)])
def test_fused_update_equals_dense_reference(size):
    W, H = size
    K = CameraIntrinsics(fx=90.0, fy=95.0, cx=W / 2 - 0.3, cy=H / 2 + 0.2, width=W, height=H)
    rng = np.random.default_rng(3)
    # a tilted wall 1-2.5 m away with a step, holes (NaN, 0), readings beyond range and very near the camera
    v, u = np.mgrid[0:H, 0:W]
    depth = (1.2 + 0.006 * u + 0.003 * v).astype(np.float32)
    depth[:, W // 2:] += 0.9
    depth[rng.random((H, W)) < 0.05] = np.nan
    depth[:10, :10] = 0.0
    depth[-8:, :20] = 9.0
    depth[20:40, 20:40] = 0.15  # near: its band reaches behind the camera
    depth[30:35, 20:30] = 0.05  # too near: invalid
    color = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    eye = np.array([0.37, -0.21, 0.55])
    T = look_at(eye, eye + np.array([0.9, 0.3, -0.2]))
    tsdf_map = TSDFMap(MapConfig(voxel_size=VS, block_size=B))
    tsdf_map.integrate_depth(depth, K, T, color, max_depth_m=5.0, min_depth_m=0.1)

    # every voxel of the allocated blocks (some behind the camera, some projecting outside the image)
    coords = tsdf_map.block_coords()
    offsets = np.stack(np.meshgrid(*(np.arange(B),) * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = (coords[:, None, :] * B + offsets[None]).reshape(-1, 3)
    update, tsdf, seen = dense_reference(depth, K, T, grid, color, 0.1, 5.0)
    got_tsdf, got_weight = tsdf_map.get_voxels(grid)
    behind = (grid * VS - T[:3, 3]) @ T[:3, 2] <= 0
    assert update.sum() > 20000 and behind.sum() > 50 and (~update).sum() > 20000
    np.testing.assert_array_equal(got_weight, update.astype(np.float32))
    np.testing.assert_array_equal(got_tsdf[update], tsdf[update])
    assert (got_tsdf[~update] == 1.0).all()
    # around the camera, every band voxel (|sdf| < truncation) of the dense evaluation is allocated
    centre = np.round(eye / VS).astype(int)
    axes = [np.arange(c - 40, c + 41, dtype=np.int64) for c in centre]
    dense = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    dense_update, dense_tsdf, _ = dense_reference(depth, K, T, dense, color, 0.1, 5.0)
    band = dense[dense_update & (np.abs(dense_tsdf) < 0.999)]
    assert len(band) > 5000 and (tsdf_map.lookup_blocks(np.floor_divide(band, B)) >= 0).all()
    # colour of the updated voxels is the pixel's colour (first observation)
    slots = tsdf_map.lookup_blocks(np.floor_divide(grid[update], B)).numpy()
    local = grid[update] % B
    colors = tsdf_map.blocks_color.numpy()[slots, local[:, 0], local[:, 1], local[:, 2]]
    np.testing.assert_array_equal(colors, seen[update])
    # blocks that got no observation were freed again
    weight = tsdf_map.blocks_weight.reshape(tsdf_map.num_blocks, -1)
    assert bool((weight > 0).any(dim=1).all())


def test_block_index_follows_random_allocation_and_removal():
    tsdf_map = TSDFMap(MapConfig(voxel_size=VS, block_size=4))
    rng = np.random.default_rng(11)
    reference: dict[tuple[int, int, int], float] = {}  # block -> value written in its voxel (0, 0, 0)
    for _ in range(40):
        new = np.unique(rng.integers(-30, 30, size=(rng.integers(1, 60), 3)), axis=0)
        values = rng.uniform(-1, 1, len(new)).astype(np.float32)
        tsdf_map.set_voxels(new * 4, values)
        for block, value in zip(map(tuple, new.tolist()), values):
            reference[block] = value
        if reference and rng.random() < 0.6:
            present = np.array(sorted(reference))
            doomed = present[rng.random(len(present)) < 0.3]
            removed = tsdf_map.remove_blocks(np.concatenate([doomed, [[99, 99, 99]]]))
            assert {tuple(b) for b in removed.touched_blocks.tolist()} == {tuple(b) for b in doomed.tolist()}
            for block in doomed.tolist():
                del reference[tuple(block)]
        coords = np.array(sorted(reference)).reshape(-1, 3)
        assert tsdf_map.num_blocks == len(reference)
        assert {tuple(b) for b in tsdf_map.block_coords().tolist()} == set(reference)
        slots = tsdf_map.lookup_blocks(coords).numpy()
        assert (slots >= 0).all() and len(np.unique(slots)) == len(slots) and slots.max() < tsdf_map.num_blocks
        tsdf, _ = tsdf_map.get_voxels(coords * 4)
        expected = np.array([reference[tuple(b)] for b in coords.tolist()], np.float32)
        np.testing.assert_array_equal(tsdf, expected)
        absent = rng.integers(40, 60, size=(20, 3))
        assert (tsdf_map.lookup_blocks(absent).numpy() == -1).all()
        # the sorted index lists exactly the live keys
        keys = tsdf_map._sorted_keys.numpy()
        assert (np.diff(keys) > 0).all()
        np.testing.assert_array_equal(np.sort(pack_keys(coords)), keys)


def test_removal_moves_at_most_as_many_blocks_as_it_frees():
    tsdf_map = TSDFMap(MapConfig(voxel_size=VS, block_size=4))
    blocks = np.array([[i, j, 0] for i in range(30) for j in range(30)], np.int64)
    tsdf_map.set_voxels(blocks * 4, np.linspace(-1, 1, len(blocks)).astype(np.float32))
    before = tsdf_map.lookup_blocks(blocks).numpy()
    doomed = blocks[[3, 100, 500, 899]]
    tsdf_map.remove_blocks(doomed)
    kept = ~np.isin(np.arange(len(blocks)), [3, 100, 500, 899])
    after = tsdf_map.lookup_blocks(blocks[kept]).numpy()
    moved = before[kept] != after
    assert moved.sum() <= len(doomed)
    tsdf, _ = tsdf_map.get_voxels(blocks[kept] * 4)
    np.testing.assert_array_equal(tsdf, np.linspace(-1, 1, len(blocks)).astype(np.float32)[kept])
    assert torch.equal(tsdf_map.lookup_blocks(doomed), torch.full((4,), -1))


@pytest.mark.parametrize("spread", [40, 10**6])  # dense bitmap, and the torch.unique path for far-apart boxes
def test_unique_blocks_in_boxes_lists_each_point_once(spread):
    from neuralrecon_ros.core.mapping.allocation import unique_blocks_in_boxes

    rng = np.random.default_rng(spread)
    lo = rng.integers(-spread, spread, size=(3, 300))
    hi = lo + rng.integers(0, 4, size=(3, 300))
    expected = {(x, y, z) for i in range(300) for x in range(lo[0, i], hi[0, i] + 1)
                for y in range(lo[1, i], hi[1, i] + 1) for z in range(lo[2, i], hi[2, i] + 1)}
    points = unique_blocks_in_boxes(torch.as_tensor(lo), torch.as_tensor(hi)).numpy()
    assert len(points) == len(expected) and {tuple(p) for p in points.tolist()} == expected
