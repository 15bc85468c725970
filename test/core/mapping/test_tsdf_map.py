"""TSDFMap: projective integration against analytic geometry, voxel access, removal, state, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import PoseError, look_at
from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.keys import BlockRangeError
from neuralrecon_ros.core.mapping.tsdf_map import MapInputError, TSDFMap
from neuralrecon_ros.core.types import CameraIntrinsics

VS = 0.04
TRUNC = 3 * VS
K_SMALL = CameraIntrinsics(fx=100.0, fy=100.0, cx=79.5, cy=59.5, width=160, height=120)
ROOM = np.array([3.0, 2.6, 2.4])


def camera_rays_world(T: np.ndarray, K: CameraIntrinsics) -> np.ndarray:
    v, u = np.meshgrid(np.arange(K.height), np.arange(K.width), indexing="ij")
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones(u.shape)], axis=-1)
    return rays @ T[:3, :3].T  # z-component in the camera is 1, so ray parameter t is the z-depth


def render_room(T: np.ndarray, K: CameraIntrinsics) -> np.ndarray:
    """z-depth (float32 (H, W)) of the inside of the box [0, ROOM] seen from inside."""
    d = camera_rays_world(T, K)
    d = np.where(d == 0, 1e-30, d)
    t = np.full(d.shape[:2], np.inf)
    for k in range(3):
        t = np.minimum(t, (np.where(d[..., k] > 0, ROOM[k], 0.0) - T[k, 3]) / d[..., k])
    return t.astype(np.float32)


def room_poses(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(n):
        eye = ROOM / 2 + rng.uniform(-0.4, 0.4, 3)
        angle = 2 * np.pi * i / n
        poses.append(look_at(eye, eye + np.array([np.cos(angle), np.sin(angle), rng.uniform(-0.5, 0.3)])))
    return poses


def frontal_wall_pose(eye_x: float) -> np.ndarray:
    """Camera at x = eye_x looking along +x (a wall x = const is fronto-parallel: constant depth)."""
    eye = np.array([eye_x, 0.3, 1.1])
    return look_at(eye, eye + np.array([1.0, 0.0, 0.0]))


def make_map(**kwargs) -> TSDFMap:
    return TSDFMap(MapConfig(voxel_size=VS, **kwargs))


def test_frontal_plane_tsdf_equals_signed_distance():
    wall_x, eye_x = 2.013, 0.3
    tsdf_map = make_map()
    depth = np.full((K_SMALL.height, K_SMALL.width), wall_x - eye_x, np.float32)
    update = tsdf_map.integrate_depth(depth, K_SMALL, frontal_wall_pose(eye_x))
    assert update.frames_integrated == 1 and len(update.touched_blocks) > 0
    coords, tsdf, weight = tsdf_map.voxels()
    assert (weight == 1.0).all()
    x = coords[:, 0] * VS
    sdf = wall_x - x
    near = np.abs(sdf) < TRUNC - 1e-4
    assert near.sum() > 1000
    # fronto-parallel plane: projective distance is the Euclidean distance, so well within half a voxel
    np.testing.assert_allclose(tsdf[near] * TRUNC, sdf[near], atol=1e-4)
    assert (np.sign(tsdf[near & (np.abs(sdf) > 1e-3)]) == np.sign(sdf[near & (np.abs(sdf) > 1e-3)])).all()
    assert (tsdf[sdf > TRUNC + 1e-4] == 1.0).all()  # free space in front, truncated
    assert (sdf[weight > 0] >= -TRUNC - 1e-4).all()  # nothing updated beyond the band behind the wall
    # every voxel of the band that projects into the image was observed
    expected = tsdf_map.get_voxels(coords)[1]
    assert (expected == weight).all()


def test_band_allocation_covers_every_updatable_voxel():
    """Brute force over a dense grid: every voxel the projective rule gives |sdf| < trunc is in the map."""
    tsdf_map = make_map()
    axes = [np.arange(-3, int(s / VS) + 4) for s in ROOM]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    for T in room_poses(4, seed=1):
        depth = render_room(T, K_SMALL)
        tsdf_map.integrate_depth(depth, K_SMALL, T, max_depth_m=10.0)
        p_cam = (grid * VS - T[:3, 3]) @ T[:3, :3]
        z = p_cam[:, 2]
        z_safe = np.where(z > 1e-6, z, 1.0)
        u = np.floor(p_cam[:, 0] / z_safe * K_SMALL.fx + K_SMALL.cx + 0.5)
        v = np.floor(p_cam[:, 1] / z_safe * K_SMALL.fy + K_SMALL.cy + 0.5)
        inside = (z > 1e-6) & (u >= 0) & (u < K_SMALL.width) & (v >= 0) & (v < K_SMALL.height)
        d = depth[np.clip(v, 0, K_SMALL.height - 1).astype(int), np.clip(u, 0, K_SMALL.width - 1).astype(int)]
        band = inside & (np.abs(d - z) < TRUNC * 0.999)
        _, weight = tsdf_map.get_voxels(grid[band])
        assert band.sum() > 10000
        assert (weight > 0).all(), f"{(weight == 0).sum()} band voxels were not allocated"


def test_room_surface_sign_and_magnitude():
    tsdf_map = make_map()
    for T in room_poses(6):
        tsdf_map.integrate_depth(render_room(T, K_SMALL), K_SMALL, T, max_depth_m=10.0)
    coords, tsdf, _ = tsdf_map.voxels()
    p = coords * VS
    distance = np.minimum(p, ROOM - p).min(axis=1)  # signed, positive inside the room
    near = np.abs(tsdf) < 1.0
    # projective distance >= Euclidean distance for oblique views, same sign, and exact on the surface
    assert (np.sign(tsdf[near]) * np.sign(distance[near]) >= 0).sum() / near.sum() > 0.99
    surface = np.abs(distance) < 0.25 * VS
    assert np.abs(tsdf[surface & near] * TRUNC - distance[surface & near]).max() < 0.5 * VS


def test_running_average_with_weight_cap():
    tsdf_map = make_map()
    wall_x = 2.0
    probe = np.array([[round(1.96 / VS), round(0.3 / VS), round(1.1 / VS)]])
    expected_t, expected_w = 0.0, 0.0
    for eye_x in (0.3, 0.32, 0.35, 0.31):
        depth = np.full((K_SMALL.height, K_SMALL.width), wall_x - eye_x + 0.01 * eye_x, np.float32)
        tsdf_map.integrate_depth(depth, K_SMALL, frontal_wall_pose(eye_x), max_weight=2.0)
        observation = min((eye_x + float(depth[0, 0]) - probe[0, 0] * VS) / TRUNC, 1.0)
        expected_t = (expected_t * expected_w + observation) / (expected_w + 1)
        expected_w = min(expected_w + 1, 2.0)
        tsdf, weight = tsdf_map.get_voxels(probe)
        assert weight[0] == expected_w
        assert tsdf[0] == pytest.approx(expected_t, abs=1e-5)


def test_color_is_averaged_with_the_tsdf():
    tsdf_map = make_map()
    depth = np.full((K_SMALL.height, K_SMALL.width), 1.7, np.float32)
    for rgb in ((10, 20, 30), (30, 60, 90)):
        image = np.empty((K_SMALL.height, K_SMALL.width, 3), np.uint8)
        image[:] = rgb
        tsdf_map.integrate_depth(depth, K_SMALL, frontal_wall_pose(0.3), image)
    assert tsdf_map.has_color
    observed = tsdf_map.blocks_weight > 0
    colors = tsdf_map.blocks_color[observed]
    assert (colors == torch.tensor([20, 40, 60], dtype=torch.uint8)).all()


def test_invalid_depth_is_ignored():
    tsdf_map = make_map()
    depth = np.full((K_SMALL.height, K_SMALL.width), np.nan, np.float32)
    depth[:, :40] = 0.0
    depth[:, 40:80] = 9.0  # beyond max_depth_m
    depth[:, 80:100] = 0.05  # nearer than min_depth_m
    update = tsdf_map.integrate_depth(depth, K_SMALL, np.eye(4), max_depth_m=5.0, min_depth_m=0.1)
    assert update.is_empty and tsdf_map.num_blocks == 0
    depth[:, 100:] = 2.0
    update = tsdf_map.integrate_depth(depth, K_SMALL, np.eye(4), max_depth_m=5.0, min_depth_m=0.1)
    coords, _, _ = tsdf_map.voxels()
    # only the columns with valid depth (u >= 100) are fused
    u = coords[:, 0] * VS / (coords[:, 2] * VS) * K_SMALL.fx + K_SMALL.cx
    assert len(coords) > 0 and u.min() > 99.4


def test_set_get_and_voxels_round_trip():
    tsdf_map = make_map()
    rng = np.random.default_rng(3)
    coords = np.unique(rng.integers(-40, 40, size=(3000, 3)), axis=0)
    values = rng.uniform(-1, 1, len(coords)).astype(np.float32)
    weights = rng.uniform(0.5, 5, len(coords)).astype(np.float32)
    update = tsdf_map.set_voxels(coords, values, weights)
    blocks = np.unique(np.floor_divide(coords, 8), axis=0)
    assert {tuple(b) for b in update.touched_blocks} == {tuple(b) for b in blocks}
    assert tsdf_map.num_blocks == len(blocks)
    tsdf, weight = tsdf_map.get_voxels(coords)
    np.testing.assert_array_equal(tsdf, values)
    np.testing.assert_array_equal(weight, weights)
    got_coords, got_tsdf, _ = tsdf_map.voxels()
    order = np.lexsort(got_coords.T[::-1])
    ref = np.lexsort(coords.T[::-1])
    np.testing.assert_array_equal(got_coords[order], coords[ref])
    np.testing.assert_array_equal(got_tsdf[order], values[ref])
    assert len(tsdf_map.voxels(min_weight=2.0)[0]) == (weights > 2.0).sum()
    # unallocated and unobserved voxels read as empty
    far = np.array([[1000, 0, 0], [-1000, 5, 5]])
    tsdf, weight = tsdf_map.get_voxels(far)
    assert (tsdf == 1).all() and (weight == 0).all()
    # default weight 1, values clamped to the normalised range, torch in and out
    tsdf_map.set_voxels(torch.tensor([[500, 500, 500], [501, 500, 500]]), torch.tensor([3.0, -7.0]))
    tsdf, weight = tsdf_map.get_voxels(torch.tensor([[500, 500, 500], [501, 500, 500]]), as_tensor=True)
    assert tsdf.tolist() == [1.0, -1.0] and weight.tolist() == [1.0, 1.0]


def test_clear_voxels_in_box():
    tsdf_map = make_map()
    cube = np.stack(np.meshgrid(*(np.arange(-10, 10),) * 3, indexing="ij"), -1).reshape(-1, 3)
    tsdf_map.set_voxels(cube, np.full(len(cube), -0.5, np.float32))
    tsdf_map.set_voxels(np.array([[100, 100, 100]]), np.array([0.25], np.float32))  # far away block
    lo, hi = np.array([-3, -2, 0]), np.array([4, 9, 2])
    update = tsdf_map.clear_voxels_in_box(lo, hi)
    expected_blocks = {(bx, by, bz) for bx in (-1, 0) for by in (-1, 0, 1) for bz in (0,)}
    assert {tuple(b) for b in update.touched_blocks} == expected_blocks
    tsdf, weight = tsdf_map.get_voxels(cube)
    inside = ((cube >= lo) & (cube <= hi)).all(axis=1)
    assert (weight[inside] == 0).all() and (tsdf[inside] == 1).all()
    assert (weight[~inside] == 1).all() and (tsdf[~inside] == -0.5).all()
    assert tsdf_map.get_voxels(np.array([[100, 100, 100]]))[0][0] == 0.25
    assert tsdf_map.clear_voxels_in_box([200, 200, 200], [210, 210, 210]).is_empty
    with pytest.raises(MapInputError, match="exceeds"):
        tsdf_map.clear_voxels_in_box([0, 0, 5], [1, 1, 4])


def test_remove_blocks_keeps_the_others_intact():
    tsdf_map = make_map()
    rng = np.random.default_rng(5)
    coords = np.unique(rng.integers(-50, 50, size=(5000, 3)), axis=0)
    values = rng.uniform(-1, 1, len(coords)).astype(np.float32)
    tsdf_map.set_voxels(coords, values)
    blocks = tsdf_map.block_coords()
    doomed = blocks[::3]
    removed = tsdf_map.remove_blocks(np.concatenate([doomed, [[999, 999, 999]]]))
    assert {tuple(b) for b in removed.touched_blocks} == {tuple(b) for b in doomed}
    assert tsdf_map.num_blocks == len(blocks) - len(doomed)
    doomed_set = {tuple(b) for b in doomed.tolist()}
    in_doomed = np.array([tuple(b) in doomed_set for b in np.floor_divide(coords, 8).tolist()])
    tsdf, weight = tsdf_map.get_voxels(coords)
    np.testing.assert_array_equal(tsdf[~in_doomed], values[~in_doomed])
    assert (weight[in_doomed] == 0).all()
    # new blocks after compaction are still found
    tsdf_map.set_voxels(np.array([[-400, 3, 3]]), np.array([0.5], np.float32))
    assert tsdf_map.get_voxels(np.array([[-400, 3, 3]]))[0][0] == 0.5
    tsdf, _ = tsdf_map.get_voxels(coords)
    np.testing.assert_array_equal(tsdf[~in_doomed], values[~in_doomed])


def test_remove_empty_blocks():
    tsdf_map = make_map()
    tsdf_map.set_voxels(np.array([[0, 0, 0], [20, 0, 0]]), np.array([0.1, 0.2], np.float32))
    tsdf_map.clear_voxels_in_box([0, 0, 0], [0, 0, 0])
    removed = tsdf_map.remove_empty_blocks()
    assert removed.touched_blocks.tolist() == [[0, 0, 0]]
    assert tsdf_map.block_coords().tolist() == [[2, 0, 0]]


def test_state_dict_round_trip_and_geometry_check():
    tsdf_map = make_map(block_size=4)
    depth = np.full((K_SMALL.height, K_SMALL.width), 1.5, np.float32)
    image = np.full((K_SMALL.height, K_SMALL.width, 3), 77, np.uint8)
    tsdf_map.integrate_depth(depth, K_SMALL, frontal_wall_pose(0.2), image)
    state = tsdf_map.state_dict()
    assert state["tsdf"].shape == (tsdf_map.num_blocks, 4, 4, 4)
    assert state["color"].shape == (tsdf_map.num_blocks, 4, 4, 4, 3)
    copy = TSDFMap.from_state_dict(state)
    assert copy.block_size == 4 and copy.voxel_size == VS and copy.truncation_m == pytest.approx(TRUNC)
    for a, b in zip(tsdf_map.voxels(), copy.voxels()):
        np.testing.assert_array_equal(a, b)
    assert torch.equal(copy.blocks_color, tsdf_map.blocks_color)
    with pytest.raises(MapInputError, match="from_state_dict"):
        make_map().load_state_dict(state)
    bad = dict(state, tsdf=state["tsdf"][:-1])
    with pytest.raises(MapInputError, match="shape"):
        TSDFMap.from_state_dict(bad)


def test_reset_and_memory():
    tsdf_map = make_map()
    empty_bytes = tsdf_map.memory_bytes()
    tsdf_map.set_voxels(np.array([[0, 0, 0], [100, 0, 0]]), np.zeros(2, np.float32))
    assert tsdf_map.memory_bytes() >= empty_bytes + 2 * 8**3 * 8
    tsdf_map.reset()
    assert tsdf_map.num_blocks == 0 and len(tsdf_map.voxels()[0]) == 0


def test_bad_inputs_raise_clear_errors():
    tsdf_map = make_map()
    depth = np.ones((K_SMALL.height, K_SMALL.width), np.float32)
    with pytest.raises(MapInputError, match="depth image has shape"):
        tsdf_map.integrate_depth(depth[:-1], K_SMALL, np.eye(4))
    with pytest.raises(MapInputError, match="colour image"):
        tsdf_map.integrate_depth(depth, K_SMALL, np.eye(4), np.zeros((K_SMALL.height, K_SMALL.width, 3)))
    with pytest.raises(PoseError):
        tsdf_map.integrate_depth(depth, K_SMALL, np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(MapInputError, match="min_depth_m"):
        tsdf_map.integrate_depth(depth, K_SMALL, np.eye(4), min_depth_m=3.0, max_depth_m=2.0)
    with pytest.raises(MapInputError, match="integer"):
        tsdf_map.set_voxels(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(MapInputError, match=r"\(N, 3\)"):
        tsdf_map.get_voxels(np.zeros((2, 2), np.int64))
    with pytest.raises(MapInputError, match="NaN"):
        tsdf_map.set_voxels(np.zeros((1, 3), np.int64), np.array([np.nan]))
    with pytest.raises(MapInputError, match="2 values for 1"):
        tsdf_map.set_voxels(np.zeros((1, 3), np.int64), np.zeros(2))
    with pytest.raises(BlockRangeError, match="representable"):
        tsdf_map.set_voxels(np.array([[2**40, 0, 0]]), np.zeros(1))
    with pytest.raises(MapInputError, match="voxel_size"):
        TSDFMap(MapConfig(voxel_size=-1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_map_matches_cpu_map():
    from neuralrecon_ros.core.mapping.meshing import extract_mesh

    maps = [make_map(), TSDFMap(MapConfig(voxel_size=VS), device="cuda")]
    for T in room_poses(4, seed=2):
        depth = render_room(T, K_SMALL)
        image = np.full((K_SMALL.height, K_SMALL.width, 3), 90, np.uint8)
        for tsdf_map in maps:
            tsdf_map.integrate_depth(depth, K_SMALL, T, image, max_depth_m=10.0)
    cpu_coords, cpu_tsdf, cpu_weight = maps[0].voxels()
    gpu_coords = maps[1].voxels()[0]
    tsdf, weight = maps[1].get_voxels(cpu_coords)
    # float rounding may move a handful of voxels to a neighbouring pixel; everything else agrees
    same = (weight == cpu_weight) & (np.abs(tsdf - cpu_tsdf) < 1e-4)
    assert same.mean() > 0.999 and abs(len(gpu_coords) - len(cpu_coords)) < 0.001 * len(cpu_coords)
    cpu_mesh, gpu_mesh = (extract_mesh(m) for m in maps)
    assert abs(len(gpu_mesh.faces) - len(cpu_mesh.faces)) <= 0.005 * len(cpu_mesh.faces)
