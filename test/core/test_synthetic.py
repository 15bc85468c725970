"""Synthetic scenes: determinism, exact depth against the analytic scene, trajectories, GT mesh, SDF."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from neuralrecon_ros.core.geometry import check_rigid, make_transform
from neuralrecon_ros.core.keyframes import FragmentBuilder, KeyframeConfig
from neuralrecon_ros.core.synthetic import (
    MISS,
    Box,
    Cylinder,
    RenderError,
    SceneConfig,
    SceneError,
    TrajectoryConfig,
    TrajectoryError,
    body_rotation,
    cast_rays,
    default_intrinsics,
    generate_scene,
    generate_trajectory,
    make_sequence,
    render,
)
from neuralrecon_ros.core.synthetic.primitives import ROOM_FACE_NAMES
from neuralrecon_ros.core.synthetic.scene import footprint_distance
from neuralrecon_ros.core.synthetic.trajectory import R_BODY_OPTICAL
from neuralrecon_ros.core.types import Frame

SMALL = default_intrinsics(160, 120)
EMPTY_ROOM = SceneConfig(n_boxes=0, n_cylinders=0)


def camera_pose(position: np.ndarray, yaw: float = 0.0, pitch_down: float = 0.0) -> np.ndarray:
    """T_world_camera of an optical camera at ``position`` with a level body heading ``yaw``."""
    return make_transform(body_rotation(yaw, pitch_down, 0.0) @ R_BODY_OPTICAL, position)


def back_project(depth: np.ndarray, T_world_camera: np.ndarray, intrinsics) -> np.ndarray:
    """World points (N, 3) of the valid depth pixels."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    cam = np.stack([(u - intrinsics.cx) / intrinsics.fx * z, (v - intrinsics.cy) / intrinsics.fy * z, z], -1)
    return cam @ T_world_camera[:3, :3].T + T_world_camera[:3, 3]


def rotation_angles_deg(poses: np.ndarray) -> np.ndarray:
    relative = np.einsum("nji,njk->nik", poses[:-1, :3, :3], poses[1:, :3, :3])
    cosine = (np.trace(relative, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


@pytest.fixture(scope="module")
def sequence():
    return make_sequence(seed=3, n_frames=300, width=160, height=120)


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_frames_and_different_seeds_differ():
    a = make_sequence(seed=7, n_frames=12, width=160, height=120)
    b = make_sequence(seed=7, n_frames=12, width=160, height=120)
    c = make_sequence(seed=8, n_frames=12, width=160, height=120)
    for index in (0, 11):
        fa, fb = a[index], b[index]
        np.testing.assert_array_equal(fa.image, fb.image)
        np.testing.assert_array_equal(fa.depth, fb.depth)
        np.testing.assert_array_equal(fa.T_world_camera, fb.T_world_camera)
    assert a.scene.room.size != c.scene.room.size
    assert not np.array_equal(a[0].image, c[0].image)
    assert not np.allclose(a.poses[0], c.poses[0])


def test_images_carry_texture(sequence):
    frame = sequence[0]
    assert frame.image.dtype == np.uint8 and frame.image.shape == (120, 160, 3)
    gray = frame.image.astype(np.float64).mean(axis=2)
    assert gray.std() > 10.0  # not flat
    assert np.abs(np.diff(gray, axis=1)).mean() > 2.0  # local structure everywhere, not just edges


# --- depth is exact -----------------------------------------------------------------------------


def test_back_projected_depth_lies_on_the_scene_surfaces(sequence):
    mesh = sequence.scene.gt_mesh(max_edge_m=0.04)
    tree = cKDTree(mesh.vertices.astype(np.float64))
    for index in (0, 150, 299):
        frame = sequence[index]
        assert frame.depth.dtype == np.float32
        assert (frame.depth > 0).all()  # a closed room: every ray hits something
        points = back_project(frame.depth, frame.T_world_camera, frame.intrinsics)
        assert np.abs(sequence.scene.sdf(points)).max() < 1e-3
        nearest, _ = tree.query(points)
        assert nearest.max() <= 0.04  # within one mesh edge of a ground-truth vertex


def test_depth_matches_sphere_tracing_of_the_exact_sdf():
    """Independent check of the ray caster (including missed hits): march every ray through scene.sdf."""
    scene = generate_scene(11)
    trajectory = generate_trajectory(scene, 60, seed=11)
    for _, T in trajectory[::30]:
        depth, surface = cast_rays(scene, T, SMALL)
        assert (surface != MISS).all()
        u = (np.arange(160) - SMALL.cx) / SMALL.fx
        v = (np.arange(120) - SMALL.cy) / SMALL.fy
        rays = np.stack(np.meshgrid(u, v), -1).reshape(-1, 2)
        directions = np.column_stack([rays, np.ones(len(rays))]) @ T[:3, :3].T  # optical z = 1
        unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        distance = np.zeros(len(unit))
        active = np.arange(len(unit))
        for _ in range(300):
            step = scene.sdf(T[:3, 3] + distance[active, None] * unit[active])
            distance[active] += step
            active = active[step > 1e-7]
        converged = np.abs(scene.sdf(T[:3, 3] + distance[:, None] * unit)) < 1e-6
        assert converged.mean() > 0.97  # grazing rays converge slowly; they are skipped
        traced_z = distance * (unit @ T[:3, :3])[:, 2]
        error = np.abs(depth.ravel()[converged] - traced_z[converged])
        assert np.median(error) < 1e-6 and error.max() < 1e-4  # the max is at grazing incidence


def test_depth_is_z_depth_not_ray_length_for_a_wall_in_front():
    scene = generate_scene(2, EMPTY_ROOM)
    lx, ly, _ = scene.room.size
    distance = lx / 2
    T = camera_pose(np.array([lx / 2, ly / 2, 1.0]), yaw=0.0)  # looking along +x at the wall x = lx
    depth, surface = cast_rays(scene, T, SMALL)
    on_wall = surface == ROOM_FACE_NAMES.index("wall_x1")
    assert on_wall[40:80, 50:110].all()
    np.testing.assert_allclose(depth[on_wall], distance, rtol=1e-6)  # constant: a fronto-parallel plane


def test_depth_of_the_floor_seen_from_above_equals_camera_height():
    scene = generate_scene(2, EMPTY_ROOM)
    lx, ly, _ = scene.room.size
    height = 1.3
    T = camera_pose(np.array([lx / 2, ly / 2, height]), yaw=0.4, pitch_down=math.pi / 2)
    depth, surface = cast_rays(scene, T, SMALL)
    assert (surface == ROOM_FACE_NAMES.index("floor")).all()
    np.testing.assert_allclose(depth, height, rtol=1e-6)


def test_depth_of_a_tilted_view_of_the_floor_matches_the_plane_analytically():
    scene = generate_scene(2, EMPTY_ROOM)
    lx, ly, _ = scene.room.size
    height, pitch = 1.4, math.radians(50)
    T = camera_pose(np.array([lx / 2, ly / 2, height]), pitch_down=pitch)
    depth, surface = cast_rays(scene, T, SMALL)
    floor = surface == ROOM_FACE_NAMES.index("floor")
    v = np.nonzero(floor)[0].astype(np.float64)
    # Optical ray (x, y, 1) drops by y cos(pitch) + sin(pitch) per unit z; the floor is `height` below.
    ray_y = (v - SMALL.cy) / SMALL.fy
    expected = height / (ray_y * math.cos(pitch) + math.sin(pitch))
    assert floor.sum() > 1000
    np.testing.assert_allclose(depth[floor], expected, rtol=1e-5)


def test_without_ceiling_upward_rays_miss_and_have_no_depth():
    scene = generate_scene(2, SceneConfig(n_boxes=0, n_cylinders=0, ceiling=False))
    lx, ly, _ = scene.room.size
    T = camera_pose(np.array([lx / 2, ly / 2, 1.5]), pitch_down=-math.pi / 2)  # looking straight up
    rgb, depth = render(scene, T, SMALL)
    assert (depth == 0).all()
    assert (rgb == rgb[0, 0]).all()
    mesh = scene.gt_mesh(0.1)
    top = mesh.vertices[:, 2] > scene.room.size[2] - 1e-4
    assert not np.any(np.abs(mesh.vertex_normals[top, 2]) > 0.5)  # no ceiling faces, only wall rims


def test_cylinder_and_box_surfaces_are_hit_exactly():
    scene = generate_scene(5)
    trajectory = generate_trajectory(scene, 300, seed=5)
    seen = set()
    for _, T in trajectory[::10]:
        depth, surface = cast_rays(scene, T, SMALL)
        points = back_project(depth, T, SMALL)
        ids = surface[depth > 0]
        for sid in np.unique(ids[ids >= 6]):
            obj = scene.objects[sid - 6]
            assert np.abs(obj.sdf(points[ids == sid])).max() < 1e-3
            seen.add(type(obj))
    assert seen == {Box, Cylinder}


def test_render_rejects_cameras_outside_the_free_space_and_bad_poses():
    scene = generate_scene(5)
    with pytest.raises(RenderError, match="free space"):
        render(scene, camera_pose(np.array([-1.0, 1.0, 1.0])), SMALL)
    box = next(o for o in scene.objects if isinstance(o, Box))
    inside = (np.array(box.lo) + np.array(box.hi)) / 2
    with pytest.raises(RenderError, match="inside furniture"):
        render(scene, camera_pose(inside), SMALL)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(RenderError, match="orthonormal"):
        render(scene, bad, SMALL)


# --- scenes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_furniture_does_not_intersect_and_respects_room_and_walkway(seed):
    scene = generate_scene(seed)
    config = scene.config
    lx, ly, height = scene.room.size
    assert config.room_size_min_m <= lx <= config.room_size_max_m
    assert config.room_height_min_m <= height <= config.room_height_max_m
    assert len(scene.objects) == config.n_boxes + config.n_cylinders
    for i, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = obj.footprint
        gap = config.clearance_m
        assert x0 >= gap - 1e-9 and y0 >= gap - 1e-9 and x1 <= lx - gap + 1e-9 and y1 <= ly - gap + 1e-9
        assert obj.bounds[1][2] < height - 0.25
        assert footprint_distance(scene.walkway, obj) > 0
        for other in scene.objects[i + 1:]:
            assert footprint_distance(obj, other) >= gap - 1e-9


def test_scene_config_errors_name_the_problem():
    with pytest.raises(SceneError, match="room_size_min_m"):
        generate_scene(0, SceneConfig(room_size_min_m=5.0, room_size_max_m=4.0))
    with pytest.raises(SceneError, match="could not place"):
        generate_scene(0, SceneConfig(room_size_min_m=3.0, room_size_max_m=3.0, n_boxes=40))


# --- SDF -----------------------------------------------------------------------------------------


def test_sdf_is_the_exact_distance_to_the_surfaces():
    scene = generate_scene(4)
    vertices = scene.gt_mesh(max_edge_m=0.02).vertices.astype(np.float64)
    on_surface = vertices[np.abs(scene.sdf(vertices)) < 1e-5]  # drop floor vertices hidden under furniture
    tree = cKDTree(on_surface)
    rng = np.random.default_rng(0)
    points = rng.uniform(0.0, 1.0, (4000, 3)) * scene.room.size
    sdf = scene.sdf(points)
    nearest, _ = tree.query(points)
    # Vertices are surface points, so |sdf| cannot exceed the distance to the nearest one; and every
    # surface point is within half a grid diagonal (1 cm) of a vertex.
    assert np.all(np.abs(sdf) <= nearest + 1e-5)
    assert np.all(np.abs(sdf) >= nearest - 0.0101)
    assert (sdf > 0).mean() > 0.5 and (sdf < 0).any()  # mostly free space, some inside furniture


def test_sdf_sign_and_values_at_known_points():
    empty = generate_scene(4, EMPTY_ROOM)
    lx, ly, height = empty.room.size
    expected = min(lx / 2, ly / 2, 1.0, height - 1.0)
    assert empty.sdf(np.array([[lx / 2, ly / 2, 1.0]]))[0] == pytest.approx(expected)
    assert empty.sdf(np.array([[0.3, 0.2, 2.0]]))[0] == pytest.approx(0.2)
    assert empty.sdf(np.array([[lx / 2, ly / 2, -0.5]]))[0] == pytest.approx(-0.5)
    assert empty.sdf(np.array([[lx + 0.3, ly + 0.4, 1.0]]))[0] == pytest.approx(-0.5)  # outside a corner
    scene = generate_scene(4)
    box = next(o for o in scene.objects if isinstance(o, Box))
    top_centre = np.array([(box.lo[0] + box.hi[0]) / 2, (box.lo[1] + box.hi[1]) / 2, box.hi[2]])
    assert scene.sdf((top_centre + np.array([0, 0, 0.05]))[None])[0] == pytest.approx(0.05)
    inside = top_centre - np.array([0, 0, 0.02])
    assert scene.sdf(inside[None])[0] == pytest.approx(-0.02)
    assert scene.sdf(np.zeros((2, 5, 3))).shape == (2, 5)


# --- ground-truth mesh ---------------------------------------------------------------------------


def test_gt_mesh_is_dense_exact_and_oriented():
    scene = generate_scene(0)
    mesh = scene.gt_mesh()  # default 2 cm
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert 2e5 < len(mesh.faces) < 3e6
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    edges = np.concatenate([np.linalg.norm(v[f[:, i]] - v[f[:, (i + 1) % 3]], axis=1) for i in range(3)])
    assert edges.max() <= 0.02 + 1e-6
    sdf = scene.sdf(v)
    # Every vertex is on a surface; the only exceptions are floor vertices hidden under a furniture rim.
    off = np.abs(sdf) > 1e-5
    assert np.all(np.abs(v[off, 2]) < 1e-6) and np.all(sdf[off] > -0.02)
    assert off.mean() < 0.01
    # Faces wind counter-clockwise seen from free space, and agree with the vertex normals.
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", normal, mesh.vertex_normals[f[:, 0]]).min() > 0.99
    centroids = v[f].mean(axis=1)
    hidden = (np.abs(centroids[:, 2]) < 1e-9) & (scene.sdf(centroids) < -1e-6)  # floor under a rim
    exposed = ~hidden
    assert exposed.mean() > 0.99
    assert (scene.sdf(centroids[exposed] + 0.003 * normal[exposed]) > 0).all()
    assert mesh.vertex_colors.shape == (len(v), 3) and mesh.vertex_colors.dtype == np.uint8


def test_gt_mesh_covers_everything_the_camera_sees(sequence):
    mesh = sequence.scene.gt_mesh(max_edge_m=0.05)
    tree = cKDTree(mesh.vertices.astype(np.float64))
    frame = sequence[100]
    points = back_project(frame.depth, frame.T_world_camera, frame.intrinsics)
    assert tree.query(points)[0].max() <= 0.05
    with pytest.raises(SceneError, match="max_edge_m"):
        sequence.scene.gt_mesh(max_edge_m=0.0)


# --- trajectories --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["handheld", "robot"])
@pytest.mark.parametrize("seed", [0, 3, 9])
def test_trajectories_are_smooth_rigid_and_inside_the_free_space(style, seed):
    scene = generate_scene(seed)
    trajectory = generate_trajectory(scene, 300, seed, style=style)
    stamps = np.array([stamp for stamp, _ in trajectory])
    poses = np.array([T for _, T in trajectory])
    np.testing.assert_allclose(np.diff(stamps), 1 / 30.0, atol=1e-6)
    assert stamps[0] == 1.7e9
    for T in poses:
        check_rigid(T, tolerance=1e-9)
    speed = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1) * 30.0
    turn_rate = rotation_angles_deg(poses) * 30.0
    assert speed.max() <= 0.5 and speed.mean() >= 0.25
    assert turn_rate.max() <= 30.0
    assert scene.sdf(poses[:, :3, 3]).min() >= TrajectoryConfig().min_clearance_m
    heights = poses[:, 2, 3]
    if style == "handheld":
        assert heights.min() >= 1.2 and heights.max() <= 1.6
    else:
        np.testing.assert_allclose(heights, TrajectoryConfig().mount_height_m, atol=1e-12)
        # Planar base: the camera's lateral (optical -x) axis stays horizontal (pure yaw, fixed pitch).
        np.testing.assert_allclose(poses[:, 2, 0], 0.0, atol=1e-12)
        pitch_down = np.degrees(np.arcsin(-poses[:, 2, 2]))  # optical z below the horizon
        np.testing.assert_allclose(pitch_down, TrajectoryConfig().mount_pitch_deg, atol=1e-9)


@pytest.mark.parametrize("style", ["handheld", "robot"])
@pytest.mark.parametrize("seed", [1, 3])
def test_keyframe_rule_yields_several_fragments(style, seed):
    seq = make_sequence(seed, n_frames=300, width=160, height=120, style=style)
    builder = FragmentBuilder(KeyframeConfig())
    blank = np.zeros((1, 1, 3), np.uint8)
    fragments = []
    for index, (stamp, T) in enumerate(zip(seq.stamps, seq.poses)):
        _, fragment = builder.add(Frame(stamp, blank, seq.intrinsics, T, index=index))
        if fragment is not None:
            fragments.append(fragment)
    assert len(fragments) >= 3
    assert all(len(f.keyframes) == 9 for f in fragments)


def test_trajectory_arguments_are_checked():
    scene = generate_scene(0)
    with pytest.raises(TrajectoryError, match="style"):
        generate_trajectory(scene, 10, 0, style="drone")
    with pytest.raises(TrajectoryError, match="n_frames"):
        generate_trajectory(scene, 0, 0)
    with pytest.raises(TrajectoryError, match="walkway"):
        generate_trajectory(scene, 10, 0, config=TrajectoryConfig(walkway_margin_m=5.0))
    with pytest.raises(TrajectoryError, match="max_speed_mps"):
        generate_trajectory(scene, 10, 0, config=TrajectoryConfig(max_speed_mps=0.0))


# --- sequences -----------------------------------------------------------------------------------


def test_sequence_yields_posed_rgbd_frames_lazily(sequence):
    assert len(sequence) == 300
    assert sequence.intrinsics.fx == pytest.approx(130.0) and sequence.intrinsics.cx == pytest.approx(79.5)
    assert default_intrinsics().fx == 520.0 and default_intrinsics().cy == 239.5
    frames = []
    for frame in sequence:
        frames.append(frame)
        if len(frames) == 3:
            break
    for index, frame in enumerate(frames):
        assert frame.index == index
        assert frame.frame_id == "camera_color_optical_frame"
        assert frame.stamp == pytest.approx(1.7e9 + index / 30.0)
        assert frame.depth.shape == (120, 160)
        np.testing.assert_array_equal(frame.T_world_camera, sequence.poses[index])
    assert sequence[-1].index == 299
    with pytest.raises(IndexError):
        sequence[300]
