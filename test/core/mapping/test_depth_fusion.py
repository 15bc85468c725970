"""Depth fusion reconstructor: frame selection, resampling, end-to-end accuracy on a synthetic room."""

from __future__ import annotations

import numpy as np
import pytest

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.mapping.config import DepthFusionConfig, MapConfig
from neuralrecon_ros.core.mapping.depth_fusion import DepthFusionReconstructor
from neuralrecon_ros.core.mapping.meshing import IncrementalMesher
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.metrics import evaluate_meshes
from neuralrecon_ros.core.types import CameraIntrinsics, Fragment, Frame

K = CameraIntrinsics(100.0, 100.0, 79.5, 59.5, 160, 120)


def wall_frame(depth: bool = True, index: int = 0) -> Frame:
    eye = np.array([0.3, 0.2, 1.0])
    image = np.full((K.height, K.width, 3), (10, 200, 30), np.uint8)
    return Frame(
        stamp=float(index), image=image, intrinsics=K,
        T_world_camera=look_at(eye, eye + np.array([1.0, 0.0, 0.0])),
        depth=np.full((K.height, K.width), 1.5, np.float32) if depth else None, index=index,
    )


def test_integrates_frames_with_depth():
    tsdf_map = TSDFMap(MapConfig())
    reconstructor = DepthFusionReconstructor(tsdf_map, DepthFusionConfig())
    assert reconstructor.name == "depth"
    assert reconstructor.on_frame(wall_frame(depth=False), is_keyframe=True) is None
    update = reconstructor.on_frame(wall_frame(), is_keyframe=False)
    assert update is not None and update.frames_integrated == 1 and len(update.touched_blocks) > 0
    assert tsdf_map.has_color
    assert reconstructor.on_fragment(Fragment(0, [wall_frame()])) is None


def test_keyframes_only_and_no_colour():
    tsdf_map = TSDFMap(MapConfig())
    config = DepthFusionConfig(integrate_all_frames=False, integrate_color=False)
    reconstructor = DepthFusionReconstructor(tsdf_map, config)
    assert reconstructor.on_frame(wall_frame(), is_keyframe=False) is None
    assert tsdf_map.num_blocks == 0
    assert reconstructor.on_frame(wall_frame(), is_keyframe=True) is not None
    assert not tsdf_map.has_color


def test_depth_at_another_resolution_than_the_image():
    """A half-resolution depth image: intrinsics are rescaled, colours resampled; same surface."""
    full, half = TSDFMap(MapConfig()), TSDFMap(MapConfig())
    DepthFusionReconstructor(full).on_frame(wall_frame(), True)
    frame = wall_frame()
    frame.depth = frame.depth[::2, ::2].copy()
    DepthFusionReconstructor(half).on_frame(frame, True)
    coords, tsdf, _ = half.voxels()
    near = np.abs(tsdf) < 0.9
    distance = 1.8 - coords[near, 0] * half.voxel_size
    np.testing.assert_allclose(tsdf[near] * half.truncation_m, distance, atol=1e-4)
    assert (half.blocks_color[half.blocks_weight > 0] == np.array([10, 200, 30], np.uint8)).all()
    # the same surface voxels as at full resolution, give or take the image border
    assert abs(len(coords) - len(full.voxels()[0])) < 0.05 * len(coords)


def panorama_poses(walkway: tuple[float, float, float, float]) -> list[np.ndarray]:
    """Cameras at 2 x 2 walkway positions and 2 heights, looking around at 4 pitches (192 poses)."""
    x0, y0, x1, y1 = walkway
    rng = np.random.default_rng(0)
    poses = []
    for x in np.linspace(x0 + 0.3, x1 - 0.3, 2):
        for y in np.linspace(y0 + 0.3, y1 - 0.3, 2):
            for height in (0.9, 1.7):
                for pitch in np.radians((-60, -25, 10, 40)):
                    for yaw in np.radians(np.arange(0, 360, 60) + rng.uniform(0, 60)):
                        eye = np.array([x, y, height])
                        view = [np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)]
                        poses.append(look_at(eye, eye + np.array(view)))
    return poses


def test_synthetic_room_reconstruction_fscore():
    """192 RGB-D frames of a synthetic room -> depth fusion -> incremental mesh: F-score at 5 cm >= 0.95."""
    synthetic = pytest.importorskip("neuralrecon_ros.core.synthetic")
    scene = synthetic.generate_scene(1, synthetic.SceneConfig(n_boxes=2, n_cylinders=1, clearance_m=0.5))
    intrinsics = synthetic.default_intrinsics(160, 120)
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.04))
    reconstructor = DepthFusionReconstructor(tsdf_map, DepthFusionConfig(max_integration_distance_m=8.0))
    mesher = IncrementalMesher()
    touched = []
    for i, T in enumerate(panorama_poses(scene.walkway)):
        rgb, depth = synthetic.render(scene, T, intrinsics)
        frame = Frame(float(i), rgb, intrinsics, T, depth, index=i)
        update = reconstructor.on_frame(frame, is_keyframe=False)
        touched.append(update.touched_blocks)
        if i % 24 == 23:  # re-mesh once per 24 frames, like a node publishing at a low rate
            mesher.update(tsdf_map, np.concatenate(touched))
            touched = []
    mesh = mesher.mesh()
    metrics = evaluate_meshes(mesh, scene.gt_mesh(max_edge_m=0.1), sample_spacing=0.01)
    assert metrics["fscore"] >= 0.95, metrics
    assert metrics["prec"] >= 0.98 and metrics["acc"] < 0.015, metrics
    assert mesh.vertex_colors is not None and mesh.vertex_colors.std() > 10  # textured walls
