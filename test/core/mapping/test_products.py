"""Planner products against an analytic scene: a box and a shelf in a rectangular room.

The map is filled with ``set_voxels`` from the exact SDF (``min(room, box, shelf)``), so every
expectation below (occupied footprints, grid geometry, distances) follows from the scene's numbers.
Voxel size 0.1 m; box faces sit a quarter voxel off the voxel lattice so no voxel is on the
``sdf < voxel/2`` threshold and the expected footprints are unambiguous.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import make_transform, rotation_about_axis
from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.products import (
    FREE,
    OCCUPIED,
    UNKNOWN,
    GridGeometry,
    OccupancyGrid2D,
    ProductError,
    ProductsConfig,
    esdf_slice,
    occupancy_grid,
    tsdf_voxel_cloud,
)
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.synthetic.primitives import Box, Room

VS = 0.1
TRUNC = 3 * VS
ROOM = Room((4.0, 3.0, 2.0))  # walls on voxels 0 and 40 (x), 0 and 30 (y)
BOX = Box((1.025, 0.825, 0.0), (2.025, 1.625, 0.8))  # occupied voxel columns x 10..20, y 8..16
SHELF = Box((2.6, 0.3, 1.6), (3.4, 0.9, 1.8))  # floats above the default band: columns x 26..34, y 3..9
# observed voxels: the room plus two voxels beyond every wall, x/y/z index ranges (inclusive)
X_RANGE, Y_RANGE, Z_RANGE = (-2, 42), (-2, 32), (-2, 21)
# the unseen corner: x >= 30, y >= 22 observed only at and below the floor (z index <= 0)
UNSEEN_X, UNSEEN_Y = 30, 22
BAND = (0.1, 1.5)


def scene_sdf(points: np.ndarray) -> np.ndarray:
    return np.minimum(ROOM.sdf(points), np.minimum(BOX.sdf(points), SHELF.sdf(points)))


def scene_voxels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [np.arange(lo, hi + 1) for lo, hi in (X_RANGE, Y_RANGE, Z_RANGE)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)
    tsdf = np.clip(scene_sdf(coords * VS) / TRUNC, -1.0, 1.0)
    unseen = (coords[:, 0] >= UNSEEN_X) & (coords[:, 1] >= UNSEEN_Y) & (coords[:, 2] > 0)
    weight = np.where(unseen, 0.0, 1.0)  # allocated but never observed
    return coords, tsdf, weight


def make_map(device: str = "cpu") -> TSDFMap:
    tsdf_map = TSDFMap(MapConfig(voxel_size=VS, block_size=8, truncation_distance_vox=3.0), device=device)
    tsdf_map.set_voxels(*scene_voxels())
    return tsdf_map


@pytest.fixture(scope="module")
def scene_map() -> TSDFMap:
    return make_map()


def expected_grid() -> np.ndarray:
    """The band [0.1, 1.5] projected by hand, indexed [iy + 2, ix + 2]."""
    ix = np.arange(X_RANGE[0], X_RANGE[1] + 1)[None, :]
    iy = np.arange(Y_RANGE[0], Y_RANGE[1] + 1)[:, None]
    expected = np.full((iy.size, ix.size), FREE, np.int8)
    walls = (ix <= 0) | (ix >= 40) | (iy <= 0) | (iy >= 30)  # on a wall (sdf 0) or behind it
    box = (ix >= 10) & (ix <= 20) & (iy >= 8) & (iy <= 16)
    expected[walls | box] = OCCUPIED
    expected[(ix >= UNSEEN_X) & (iy >= UNSEEN_Y)] = UNKNOWN
    return expected


def rz(yaw: float, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    return make_transform(rotation_about_axis(np.array([0.0, 0.0, 1.0]), yaw), np.array(translation))


def analytic_2d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact 2D signed distance to the band's obstacles (box footprint and walls), positive in free space."""
    points = np.stack([x, y, np.zeros_like(x)], axis=-1).reshape(-1, 3)
    tall_box = Box((*BOX.lo[:2], -100.0), (*BOX.hi[:2], 100.0))
    tall_room = Room((*ROOM.size[:2], 200.0))
    room = tall_room.sdf(points + np.array([0.0, 0.0, 100.0]))
    return np.minimum(tall_box.sdf(points), room).reshape(x.shape)


def distance_to_unseen(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance to the nearest cell centre of the unseen corner (x >= 3.0, y >= 2.2)."""
    return np.hypot(np.maximum(UNSEEN_X * VS - x, 0.0), np.maximum(UNSEEN_Y * VS - y, 0.0))


# ------------------------------------------------------------------------------- occupancy grid


def test_occupancy_grid_matches_the_scene(scene_map):
    grid = occupancy_grid(scene_map, *BAND)
    # the grid spans every observed voxel column, cell centres on voxel positions
    assert grid.resolution == VS
    assert (grid.width, grid.height) == (45, 35)
    assert grid.origin_xy == pytest.approx((-0.25, -0.25), abs=1e-12)
    assert grid.data.dtype == np.int8 and grid.data.shape == (35, 45)
    np.testing.assert_array_equal(grid.data, expected_grid())


def test_height_band_selects_obstacles(scene_map):
    shelf = (slice(3 + 2, 9 + 3), slice(26 + 2, 34 + 3))  # [iy + 2, ix + 2] of the shelf footprint
    assert (occupancy_grid(scene_map, *BAND).data[shelf] == FREE).all()
    # the band's upper edge exactly on the shelf's bottom voxel layer (z = 1.6) includes it
    with_shelf = occupancy_grid(scene_map, 0.1, 1.6)
    assert (with_shelf.data[shelf] == OCCUPIED).all()
    np.testing.assert_array_equal(np.delete(with_shelf.data, np.s_[5:12], axis=0),
                                  np.delete(expected_grid(), np.s_[5:12], axis=0))
    # a band holding only the room's interior air above the box: the box vanishes, walls stay
    above_box = occupancy_grid(scene_map, 0.95, 1.45).data
    assert (above_box[8 + 2:17 + 2, 10 + 2:21 + 2] == FREE).all()
    assert (above_box[:, :3] == OCCUPIED).all()
    # nothing observed in the band: same geometry, all unknown
    empty_band = occupancy_grid(scene_map, 2.5, 3.0)
    assert (empty_band.width, empty_band.height, empty_band.origin_xy) == (45, 35, grid_origin(scene_map))
    assert (empty_band.data == UNKNOWN).all()


def grid_origin(tsdf_map: TSDFMap) -> tuple[float, float]:
    return occupancy_grid(tsdf_map, *BAND).origin_xy


def test_min_weight_hides_weak_voxels():
    tsdf_map = make_map()
    coords, tsdf, weight = scene_voxels()
    strong = coords[:, 0] < 20
    tsdf_map.set_voxels(coords, tsdf, np.where(strong, 2.0 * weight, weight))
    grid = occupancy_grid(tsdf_map, *BAND, min_weight=1.5)
    assert (grid.width, grid.height) == (22, 35)  # only x index -2 .. 19 is observed now
    np.testing.assert_array_equal(grid.data, expected_grid()[:, :22])


def test_translated_map_shifts_the_grid_and_the_band(scene_map):
    T_global_map = rz(0.0, (1.234, -0.567, 0.3))  # map floor 0.3 m above the global origin
    grid = occupancy_grid(scene_map, BAND[0] + 0.3, BAND[1] + 0.3, T_global_map)
    np.testing.assert_array_equal(grid.data, expected_grid())
    assert grid.origin_xy == pytest.approx((-0.25 + 1.234, -0.25 - 0.567), abs=1e-12)
    # heights are global: a zero-thickness band at global z 0.1 is the map's floor layer (map z = 0, sdf 0,
    # observed everywhere, the unseen corner included) when the map sits 0.1 m up
    floor = occupancy_grid(scene_map, 0.1, 0.1, rz(0.0, (0.0, 0.0, 0.1)))
    assert (floor.data == OCCUPIED).all()
    assert (occupancy_grid(scene_map, 0.1, 0.1).data[expected_grid() == FREE] == FREE).all()


def test_map_yawed_by_90_degrees_rotates_the_grid_exactly(scene_map):
    T_global_map = rz(math.pi / 2, (0.5, 0.25, 0.0))
    grid = occupancy_grid(scene_map, *BAND, T_global_map)
    # global cell (gx, gy) = (-iy, ix) of map column (ix, iy)
    np.testing.assert_array_equal(grid.data, expected_grid()[::-1].T)
    assert (grid.width, grid.height) == (35, 45)
    assert grid.origin_xy == pytest.approx((0.5 - 3.25, 0.25 - 0.25), abs=1e-12)


def test_map_yawed_by_30_degrees_is_resampled_conservatively(scene_map):
    yaw, t = math.radians(30.0), np.array([0.5, -0.3])
    grid = occupancy_grid(scene_map, *BAND, rz(yaw, (*t, 0.0)))
    assert grid.resolution == VS
    x, y = grid.geometry.cell_centres()
    c, s = math.cos(yaw), math.sin(yaw)
    mx, my = c * (x - t[0]) + s * (y - t[1]), -s * (x - t[0]) + c * (y - t[1])  # cell centres, map frame
    d = analytic_2d(mx, my)
    far_from_unseen = distance_to_unseen(mx, my) > 1.6 * VS
    inside_footprint = (mx > -0.2 + 1.1 * VS) & (mx < 4.2 - 1.1 * VS) & (my > -0.2 + 1.1 * VS) & (
        my < 3.2 - 1.1 * VS)
    deep_in_box = d < -1.1 * VS
    clear = (d > 1.6 * VS) & far_from_unseen
    assert deep_in_box.sum() > 40 and clear.sum() > 500
    assert (grid.data[deep_in_box & inside_footprint] == OCCUPIED).all()
    assert (grid.data[clear] == FREE).all()
    # 2 x 2 sub-points per column leave no unknown hole inside the observed area
    assert (grid.data[inside_footprint & far_from_unseen] != UNKNOWN).all()
    # obstacles only grow: every occupied cell is within ~1.6 voxels of an obstacle
    assert (d[grid.data == OCCUPIED] < 1.6 * VS).all()


def test_occupancy_rejects_bad_input(scene_map):
    with pytest.raises(ProductError, match="min_height_m <= max_height_m"):
        occupancy_grid(scene_map, 1.0, 0.5)
    tilted = make_transform(rotation_about_axis(np.array([1.0, 0.0, 0.0]), math.radians(5.0)), np.zeros(3))
    with pytest.raises(ProductError, match="tilts the map's z axis by 5.000 deg"):
        occupancy_grid(scene_map, *BAND, tilted)
    with pytest.raises(ProductError, match="T_global_map rotation is not orthonormal"):
        occupancy_grid(scene_map, *BAND, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ProductError, match="min_weight"):
        occupancy_grid(scene_map, *BAND, min_weight=-1.0)
    stray = TSDFMap(MapConfig(voxel_size=VS))
    stray.set_voxels(np.array([[0, 0, 5], [10_000, 10_000, 5]]), np.zeros(2))
    with pytest.raises(ProductError, match="span 10001 x 10001 cells"):
        occupancy_grid(stray, *BAND)


def test_map_without_observed_voxels_gives_empty_products():
    tsdf_map = TSDFMap(MapConfig(voxel_size=VS))
    tsdf_map.set_voxels(np.array([[0, 0, 0], [5, 9, 1]]), np.zeros(2), np.zeros(2))  # allocated, unobserved
    grid = occupancy_grid(tsdf_map, *BAND, rz(0.0, (1.0, 2.0, 0.0)))
    assert grid.is_empty and (grid.width, grid.height) == (0, 0) and grid.origin_xy == (1.0, 2.0)
    esdf = esdf_slice(grid, 1.0)
    assert esdf.distance.shape == (0, 0) and esdf.known.shape == (0, 0)
    assert len(tsdf_voxel_cloud(tsdf_map)) == 0


# ------------------------------------------------------------------------------- ESDF slice


def test_esdf_matches_the_analytic_distance(scene_map):
    grid = occupancy_grid(scene_map, *BAND)
    cap = 0.6
    esdf = esdf_slice(grid, cap, z_m=0.5)
    assert esdf.geometry == grid.geometry and esdf.z_m == 0.5
    assert esdf.distance.dtype == np.float32
    x, y = grid.geometry.cell_centres()
    truth = np.clip(analytic_2d(x, y), -cap, cap)
    # cells whose nearest obstacle (or free cell, inside) cannot be hidden in the unseen corner
    checked = (grid.data != UNKNOWN) & (np.abs(truth) + VS <= distance_to_unseen(x, y))
    assert checked.sum() > 900 and (checked & (grid.data == OCCUPIED)).sum() > 150
    assert np.abs(esdf.distance - truth)[checked].max() <= VS / 2 + 1e-6
    # a cell of the box's centre row: 0.375 m from the box's nearer y face, measured between centres
    assert esdf.distance[12 + 2, 15 + 2] == pytest.approx(-0.4, abs=1e-6)
    assert esdf.distance[12 + 2, 24 + 2] == pytest.approx(0.4, abs=1e-6)  # 4 cells right of the box
    # far from everything the distance is capped exactly; nothing exceeds the cap
    assert (esdf.distance[(truth >= cap) & checked & (analytic_2d(x, y) > cap + VS)] == np.float32(cap)).all()
    assert np.abs(esdf.distance).max() <= cap


def test_esdf_flags_unknown_cells_and_unsigned_mode(scene_map):
    grid = occupancy_grid(scene_map, *BAND)
    signed = esdf_slice(grid, 2.0)
    unsigned = esdf_slice(grid, 2.0, signed=False)
    np.testing.assert_array_equal(signed.known, grid.data != UNKNOWN)
    masked = signed.masked_distance()
    np.testing.assert_array_equal(np.isnan(masked), grid.data == UNKNOWN)
    occupied = grid.data == OCCUPIED
    assert (unsigned.distance[occupied] == 0).all()
    np.testing.assert_array_equal(unsigned.distance[~occupied], signed.distance[~occupied])
    assert (signed.distance[~occupied] >= VS - 1e-6).all()
    assert np.isfinite(signed.distance).all()  # unknown cells get a distance too (flagged by known)


def test_esdf_without_obstacles_or_free_space_is_capped():
    geometry = GridGeometry(0.05, (0.0, 0.0), 6, 4)
    free = esdf_slice(OccupancyGrid2D(geometry, np.zeros((4, 6), np.int8)), 0.3)
    assert (free.distance == np.float32(0.3)).all()
    solid = esdf_slice(OccupancyGrid2D(geometry, np.full((4, 6), OCCUPIED, np.int8)), 0.3)
    assert (solid.distance == np.float32(-0.3)).all()
    with pytest.raises(ProductError, match="max_distance_m"):
        esdf_slice(OccupancyGrid2D(geometry, np.zeros((4, 6), np.int8)), 0.0)
    with pytest.raises(ProductError, match="shape"):
        esdf_slice(OccupancyGrid2D(geometry, np.zeros((6, 4), np.int8)), 1.0)


# ------------------------------------------------------------------------------- TSDF cloud


def test_tsdf_cloud_holds_near_surface_voxels_at_their_positions(scene_map):
    coords, tsdf, weight = scene_voxels()
    tsdf = tsdf.astype(np.float32)
    cloud = tsdf_voxel_cloud(scene_map, max_abs_tsdf=0.5)
    assert cloud.points.dtype == np.float32 and cloud.tsdf.dtype == np.float32
    assert (np.abs(cloud.tsdf) <= 0.5).all() and (cloud.weight == 1.0).all()
    expected = (np.abs(tsdf) <= 0.5) & (weight > 0)
    assert len(cloud) == expected.sum()
    # same voxel set, positions = index * voxel_size, TSDF values as written
    order = np.lexsort(cloud.points.T[::-1])
    expected_points = (coords[expected] * VS).astype(np.float32)
    expected_order = np.lexsort(expected_points.T[::-1])
    np.testing.assert_array_equal(cloud.points[order], expected_points[expected_order])
    np.testing.assert_array_equal(cloud.tsdf[order], tsdf[expected][expected_order])
    # the analytic surface is within half the truncation band of every point
    assert (np.abs(scene_sdf(cloud.points.astype(np.float64))) <= 0.5 * TRUNC + 1e-6).all()
    # the same points expressed in another frame
    T = make_transform(rotation_about_axis(np.array([1.0, 2.0, 3.0]), 0.7), np.array([4.0, -5.0, 6.0]))
    moved = tsdf_voxel_cloud(scene_map, max_abs_tsdf=0.5, T_frame_map=T)
    np.testing.assert_allclose(moved.points, cloud.points @ T[:3, :3].T + T[:3, 3], atol=1e-5)
    np.testing.assert_array_equal(moved.tsdf, cloud.tsdf)


def test_tsdf_cloud_filters_by_weight_and_checks_threshold():
    tsdf_map = make_map()
    coords, tsdf, weight = scene_voxels()
    tsdf_map.set_voxels(coords, tsdf, np.where(coords[:, 2] < 5, 3.0 * weight, weight))
    cloud = tsdf_voxel_cloud(tsdf_map, max_abs_tsdf=1.0, min_weight=2.0)
    assert len(cloud) == ((coords[:, 2] < 5) & (weight > 0)).sum()
    assert (cloud.points[:, 2] < 0.45).all() and (cloud.weight == 3.0).all()
    with pytest.raises(ProductError, match="max_abs_tsdf"):
        tsdf_voxel_cloud(tsdf_map, max_abs_tsdf=1.5)


# ------------------------------------------------------------------------------- config, devices


def test_products_config_defaults_are_consistent():
    config = ProductsConfig()
    assert config.occupancy_min_height_m < config.occupancy_max_height_m
    assert 0.0 < config.tsdf_cloud_max_abs_tsdf <= 1.0 and config.esdf_max_distance_m > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_map_gives_the_same_products(scene_map):
    cuda_map = make_map("cuda")
    T = rz(math.radians(30.0), (0.5, -0.3, 0.1))
    for T_global_map in (None, T):
        cpu_grid = occupancy_grid(scene_map, *BAND, T_global_map)
        cuda_grid = occupancy_grid(cuda_map, *BAND, T_global_map)
        assert cuda_grid.geometry == cpu_grid.geometry
        np.testing.assert_array_equal(cuda_grid.data, cpu_grid.data)
    cpu_cloud, cuda_cloud = tsdf_voxel_cloud(scene_map), tsdf_voxel_cloud(cuda_map)
    assert isinstance(cuda_cloud.points, np.ndarray)
    np.testing.assert_array_equal(np.sort(cuda_cloud.tsdf), np.sort(cpu_cloud.tsdf))
