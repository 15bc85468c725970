"""Training scenes from ScanNet-layout folders match the same recording fed directly."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.io

from neuralrecon_ros.core.training.datasets import DatasetError, prepare_scene, reproject_depth, scannet_scene


def _write_scannet(folder, frames, K_depth=None):
    for sub in ("color", "depth", "pose", "intrinsic"):
        (folder / sub).mkdir(parents=True)
    K = np.eye(4)
    K[:3, :3] = frames[0].intrinsics.matrix
    np.savetxt(folder / "intrinsic" / "intrinsic_color.txt", K)
    if K_depth is not None:
        np.savetxt(folder / "intrinsic" / "intrinsic_depth.txt", K_depth)
    for n, frame in enumerate(frames):
        skimage.io.imsave(folder / "color" / f"{n}.png", frame.image, check_contrast=False)
        depth_mm = np.nan_to_num(frame.depth * 1000.0).round().astype(np.uint16)
        skimage.io.imsave(folder / "depth" / f"{n}.png", depth_mm, check_contrast=False)
        np.savetxt(folder / "pose" / f"{n}.txt", frame.T_world_camera)


def test_scannet_folder_gives_the_same_fragments(tmp_path, small_frames, small_keyframes):
    frames = small_frames
    _write_scannet(tmp_path, frames)
    pose = np.full((4, 4), -np.inf)
    np.savetxt(tmp_path / "pose" / "30.txt", pose)  # an invalid pose is skipped (upstream)
    skimage.io.imsave(tmp_path / "color" / "30.png", frames[0].image, check_contrast=False)
    skimage.io.imsave(tmp_path / "depth" / "30.png", np.zeros((120, 160), np.uint16), check_contrast=False)

    folder = scannet_scene(tmp_path, small_keyframes)
    direct = prepare_scene(frames, "direct", "test", small_keyframes)
    assert [[f.index for f in k] for k in folder.fragments] == [
        [f.index for f in k] for k in direct.fragments
    ]
    np.testing.assert_array_equal(folder.fragments[0][0].image, frames[0].image)
    np.testing.assert_allclose(
        folder.fragments[-1][2].T_world_camera, direct.fragments[-1][2].T_world_camera, atol=1e-12
    )
    # depth quantised to millimetres: the targets agree to a millimetre (a few voxels at the band's edge flip)
    a, b = folder.fragment_targets(0), direct.fragment_targets(0)
    both = a.occupancy[2] & b.occupancy[2]
    assert both.sum() > 0.99 * b.occupancy[2].sum()
    assert np.median(np.abs(a.tsdf[2][both] - b.tsdf[2][both])) * 0.12 < 0.001
    assert folder.source == f"scannet:{tmp_path}"


def test_depth_camera_intrinsics_are_resampled():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    K = np.array([[2.0, 0, 1.5], [0, 2.0, 1.0], [0, 0, 1]])
    np.testing.assert_array_equal(reproject_depth(depth, K, K), depth)
    shifted = K.copy()
    shifted[0, 2] = 2.5  # target principal point one pixel right: target column u sees depth column u - 1
    out = reproject_depth(depth, K, shifted)
    np.testing.assert_array_equal(out[:, 1:], depth[:, :-1])
    assert (out[:, 0] == 0).all()


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="lacks color/"):
        scannet_scene(tmp_path)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (tmp_path / sub).mkdir()
    with pytest.raises(DatasetError, match="no frame number"):
        scannet_scene(tmp_path)
