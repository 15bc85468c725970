"""Multi-room floor plans and robot tours: exact geometry of walls and doorways, limits, revisits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from neuralrecon_ros.core.geometry import make_transform
from neuralrecon_ros.core.synthetic import TrajectoryConfig, TrajectoryError, body_rotation, cast_rays
from neuralrecon_ros.core.synthetic.floor_plan import (
    FloorPlanConfig,
    FloorPlanError,
    generate_floor_plan,
    generate_room_tour,
    make_tour_sequence,
)
from neuralrecon_ros.core.synthetic.trajectory import R_BODY_OPTICAL
from neuralrecon_ros.core.types import CameraIntrinsics

CONFIG = FloorPlanConfig()  # 3 x 2 rooms
RATE_HZ = 30.0


@pytest.fixture(scope="module")
def plan():
    return generate_floor_plan(5, CONFIG)


@pytest.fixture(scope="module")
def tour(plan):
    return generate_room_tour(plan, 6000, seed=5, rate_hz=RATE_HZ)


def test_rooms_tile_the_shell_and_doorways_are_exactly_door_wide(plan) -> None:
    assert plan.n_rooms == 6
    lx, ly, _ = plan.scene.room.size
    for index, (x0, y0, x1, y1) in enumerate(plan.rooms):
        assert CONFIG.room_size_min_m <= x1 - x0 <= CONFIG.room_size_max_m
        assert 0 <= x0 < x1 <= lx and 0 <= y0 < y1 <= ly
        assert plan.room_of(plan.centre(index)[None])[0] == index
    assert sorted(plan.neighbours(0)) == [1, 3] and sorted(plan.neighbours(4)) == [1, 3, 5]
    for a in range(plan.n_rooms):
        for b in plan.neighbours(a):
            ca, cb = plan.centre(a), plan.centre(b)
            gap_axis = 0 if abs(ca[1] - cb[1]) < 1e-9 else 1
            # the doorway's centre: between the two rooms on the line joining their centres
            ra, rb = plan.rooms[a], plan.rooms[b]
            wall_mid = (max(ra[gap_axis], rb[gap_axis]) + min(ra[gap_axis + 2], rb[gap_axis + 2])) / 2
            door = ca.copy()
            door[gap_axis] = wall_mid
            point = np.array([[door[0], door[1], 1.0]])
            assert plan.scene.sdf(point)[0] == pytest.approx(CONFIG.door_width_m / 2, abs=1e-9)
            beside = point.copy()  # beside the doorway the wall is solid
            beside[0, 1 - gap_axis] += CONFIG.door_width_m
            assert plan.scene.sdf(beside)[0] < 0


def test_the_line_between_neighbouring_centres_is_free_for_the_robot(plan) -> None:
    for a in range(plan.n_rooms):
        for b in plan.neighbours(a):
            s = np.linspace(0.0, 1.0, 400)[:, None]
            xy = plan.centre(a) + s * (plan.centre(b) - plan.centre(a))
            points = np.column_stack([xy, np.full(len(xy), 1.2)])  # 1.2 m from the floor, 1.4 m from the ceiling
            assert plan.scene.sdf(points).min() >= CONFIG.door_width_m / 2 - 1e-9
        centre = np.array([[*plan.centre(a), 1.2]])
        assert plan.scene.sdf(centre)[0] >= CONFIG.free_band_m / 2 - 1e-9


def test_a_camera_sees_through_the_doorway_to_the_far_wall() -> None:
    plan = generate_floor_plan(2, FloorPlanConfig(rooms_x=2, rooms_y=1))
    intrinsics = CameraIntrinsics(80.0, 80.0, 40.0, 30.0, 81, 61)  # pixel (40, 30) looks along the axis
    camera = np.array([*plan.centre(0), 0.5])
    T = make_transform(body_rotation(0.0, 0.0, 0.0) @ R_BODY_OPTICAL, camera)  # facing +x, level
    depth, _ = cast_rays(plan.scene, T, intrinsics)
    assert depth[30, 40] == pytest.approx(plan.scene.room.size[0] - camera[0], abs=1e-4)


def test_same_seed_same_plan_and_tour_different_seed_differs(plan, tour) -> None:
    again = generate_floor_plan(5, CONFIG)
    assert again.rooms == plan.rooms and len(again.scene.objects) == len(plan.scene.objects)
    poses_again, rooms_again = generate_room_tour(again, 6000, seed=5, rate_hz=RATE_HZ)
    np.testing.assert_array_equal(np.stack([p for _, p in poses_again]), np.stack([p for _, p in tour[0]]))
    assert rooms_again == tour[1]
    assert generate_floor_plan(6, CONFIG).rooms != plan.rooms


def test_tour_keeps_leaving_and_revisiting_every_room_within_the_limits(plan, tour) -> None:
    poses_stamped, rooms = tour
    stamps = np.array([t for t, _ in poses_stamped])
    poses = np.stack([p for _, p in poses_stamped])
    np.testing.assert_allclose(np.diff(stamps), 1 / RATE_HZ, atol=1e-6)  # float64 at 1.7e9 s
    assert set(rooms) == set(range(plan.n_rooms))
    assert len(rooms) - len(set(rooms)) >= 3  # rooms are left and entered again
    assert all(b in plan.neighbours(a) for a, b in itertools.pairwise(rooms))  # only through doorways
    # the rooms list is what the camera positions say
    inside = plan.room_of(poses[:, :2, 3])
    inside = inside[inside >= 0]
    assert [int(r) for i, r in enumerate(inside) if i == 0 or r != inside[i - 1]] == rooms
    config = TrajectoryConfig()
    base_speed = np.linalg.norm(np.diff(poses[:, :2, 3], axis=0), axis=1) * RATE_HZ  # camera is on the base:
    yaw = np.unwrap(np.arctan2(poses[:, 1, 2], poses[:, 0, 2]))  # optical z = base forward (level part)
    yaw_rate = np.abs(np.diff(yaw)) * RATE_HZ
    # the camera sits 0.1 m ahead of the base, so turning on the spot moves it: allow that arc
    assert base_speed.max() <= config.max_speed_mps + 0.1 * math.radians(config.robot_max_rotation_deg_s) + 1e-6
    assert yaw_rate.max() <= math.radians(config.robot_max_rotation_deg_s) * (1 + 1e-3)
    assert plan.scene.sdf(poses[:, :3, 3]).min() >= config.min_clearance_m
    assert np.allclose(poses[:, 2, 3], poses[0, 2, 3])  # a planar robot: constant camera height


def test_tour_sequence_renders_posed_rgbd_frames() -> None:
    sequence, plan, rooms = make_tour_sequence(1, 40, 40, 30)
    frame = sequence[39]
    assert frame.image.shape == (30, 40, 3) and frame.depth.shape == (30, 40)
    assert (frame.depth > 0).all() and sequence.style == "robot"
    np.testing.assert_array_equal(frame.T_world_camera, sequence.poses[39])
    assert rooms[0] == 0 and plan.n_rooms == 6


def test_bad_settings_are_named() -> None:
    with pytest.raises(FloorPlanError, match="door_width_m"):
        generate_floor_plan(0, FloorPlanConfig(door_width_m=2.0, free_band_m=1.6))
    with pytest.raises(FloorPlanError, match="rooms_x"):
        generate_floor_plan(0, FloorPlanConfig(rooms_x=0))
    with pytest.raises(TrajectoryError, match="n_frames"):
        generate_room_tour(generate_floor_plan(0), 0, seed=0)
