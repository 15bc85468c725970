"""Ground-truth targets of a synthetic fragment against the analytic scene (scene.sdf)."""

from __future__ import annotations

import numpy as np
import pytest

from neuralrecon_ros.core.network.projection import derive_fragment_geometry
from neuralrecon_ros.core.training.augment import transform_frames
from neuralrecon_ros.core.training.datasets import network_intrinsics
from neuralrecon_ros.core.training.targets import (
    LEVEL_VOXEL_SIZES,
    TRUNCATION_VOXELS,
    SceneTSDF,
    TargetError,
    fragment_targets,
    level_grid_points,
)
from neuralrecon_ros.core.types import Frame


def _targets(scene, keyframes, T_aug=None):
    frames = keyframes if T_aug is None else transform_frames(keyframes, T_aug)
    geometry = derive_fragment_geometry(
        network_intrinsics(frames), np.stack([f.T_world_camera for f in frames])
    )
    origin = geometry.vol_origin_voxels.numpy()
    T_scene_world = None if T_aug is None else np.linalg.inv(T_aug)
    return fragment_targets(scene.scene_tsdf, frames, origin, T_scene_world), origin, T_scene_world


def _check_against_sdf(sequence, targets, origin, T_scene_world):
    for level, size in enumerate(LEVEL_VOXEL_SIZES):
        occupied = targets.occupancy[level].reshape(-1)
        assert occupied.sum() > 50, f"level {level}: too few occupied voxels"
        points = level_grid_points(origin, level)[occupied]
        if T_scene_world is not None:
            points = points @ T_scene_world[:3, :3].T + T_scene_world[:3, 3]
        truncation = TRUNCATION_VOXELS * size
        exact = np.clip(sequence.scene.sdf(points) / truncation, -1.0, 1.0)
        fused = targets.tsdf[level].reshape(-1)[occupied]
        error_vox = np.abs(fused - exact) * TRUNCATION_VOXELS  # in voxels of this level
        # fused (projective) distances differ from Euclidean ones at grazing angles and where views see
        # the voxel behind different surfaces (worst with level 0's 0.48 m truncation): typical error is
        # a fraction of a voxel, the large majority is within one voxel
        assert np.median(error_vox) < 0.3, f"level {level}: median error {np.median(error_vox):.2f} voxels"
        assert np.mean(error_vox <= 1.0) > 0.85, (
            f"level {level}: {np.mean(error_vox <= 1.0):.3f} within a voxel"
        )
        clear = np.abs(exact) * TRUNCATION_VOXELS > 1.0  # more than a voxel from the surface: sign is certain
        assert np.mean(np.sign(fused[clear]) == np.sign(exact[clear])) > 0.99
        # every occupied voxel really lies in the truncation band (slack: a voxel, plus one for interpolation
        # between grid points of the scene TSDF when the world was moved)
        slack = size if T_scene_world is None else 2 * size
        assert np.all(np.abs(sequence.scene.sdf(points)) < truncation + slack)


def test_fragment_targets_match_the_analytic_scene(small_scene):
    scene, sequence = small_scene
    targets, origin, _ = _targets(scene, scene.fragments[0])
    assert [t.shape for t in targets.tsdf] == [(24, 24, 24), (48, 48, 48), (96, 96, 96)]
    _check_against_sdf(sequence, targets, origin, None)
    # the lazily cached un-augmented targets are the same
    cached = scene.fragment_targets(0)
    for level in range(3):
        np.testing.assert_array_equal(cached.tsdf[level], targets.tsdf[level])


def test_augmented_targets_follow_the_moved_world(small_scene):
    scene, sequence = small_scene
    angle = 0.7
    T_aug = np.eye(4)
    T_aug[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    T_aug[:3, 3] = [0.37, -0.81, 0.01]
    targets, origin, T_scene_world = _targets(scene, scene.fragments[1], T_aug)
    _check_against_sdf(sequence, targets, origin, T_scene_world)


def test_sample_on_grid_points_is_exact(small_scene):
    scene, _ = small_scene
    coords, tsdf, _ = scene.scene_tsdf.arrays(2)
    values, observed = scene.scene_tsdf.sample(2, coords * LEVEL_VOXEL_SIZES[2])
    assert observed.all()
    np.testing.assert_allclose(values, tsdf, atol=1e-6)
    far = scene.scene_tsdf.sample(2, np.array([[100.0, 100.0, 100.0]]))
    assert far[0][0] == 1.0 and not far[1][0]


def test_round_trip_through_arrays(small_scene):
    scene, _ = small_scene
    copy = SceneTSDF.from_arrays([scene.scene_tsdf.arrays(i) for i in range(3)])
    for i in range(3):
        a, b = copy.arrays(i), scene.scene_tsdf.arrays(i)
        order_a, order_b = np.lexsort(a[0].T), np.lexsort(b[0].T)  # block order is not part of the data
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x[order_a], y[order_b])


def test_frames_without_depth_are_rejected(small_scene):
    scene, _ = small_scene
    f = scene.fragments[0][0]
    with pytest.raises(TargetError, match="no depth image"):
        SceneTSDF().integrate(Frame(f.stamp, f.image, f.intrinsics, f.T_world_camera, None, index=5))
