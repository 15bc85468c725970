"""Fragment geometry: upstream's derived matrices from raw poses, placement, float32 recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.network.projection import (
    GeometryError,
    affine_f32,
    derive_fragment_geometry,
    place_fragment_volume,
    voxel_positions_f32,
    world_to_aligned_camera,
)


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place of the row's largest magnitude (a matrix row is one dot
    product: an entry that cancels to ~0 carries the rounding of the row's large terms)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = np.maximum(np.abs(a), np.abs(b)).max(axis=-1, keepdims=True)
    return np.abs(a.astype(np.float64) - b) / np.spacing(scale)


@pytest.fixture(scope="module")
def fragments(parity_dir):
    return json.loads((parity_dir / "inputs.json").read_text())["fragments"]


def test_derived_matrices_match_upstream_fixture(fragments):
    for fragment in fragments:
        geometry = derive_fragment_geometry(np.array(fragment["intrinsics"]), np.array(fragment["cam_to_world"]))
        proj = np.array(fragment["proj_matrices"], np.float32)
        aligned = np.array(fragment["world_to_aligned_camera"], np.float32)
        assert geometry.proj_matrices.shape == (9, 3, 4, 4)
        # float32 inverses (LAPACK, torch) round in the last bits by the CPU's kernels: bit-identical on
        # some machines, up to ~11 ulps on others (seen on the 2-core CI machines)
        assert _ulps(geometry.proj_matrices.numpy(), proj).max() <= 16
        assert _ulps(geometry.world_to_aligned_camera.numpy(), aligned).max() <= 16
        assert geometry.vol_origin_voxels.tolist() == fragment["vol_origin_partial_voxels"]
        # vol_origin_partial is fl(voxels * fl(0.04)): identical bits, not just close
        assert np.array_equal(geometry.vol_origin_partial.numpy(), np.array(fragment["vol_origin_partial"], np.float32))


def test_aligned_frame_is_gravity_aligned_at_the_middle_camera():
    T = look_at(np.array([1.0, 2.0, 1.5]), np.array([3.0, 1.0, 0.4]))
    W = world_to_aligned_camera(torch.tensor(T, dtype=torch.float32)).double().numpy()
    # world up becomes the aligned frame's -y, the camera centre its origin, and W stays rigid
    assert np.allclose(W[:3, :3] @ [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], atol=1e-6)
    assert np.allclose(W @ np.append(T[:3, 3], 1.0), [0.0, 0.0, 0.0, 1.0], atol=1e-6)
    assert np.allclose(W[:3, :3] @ W[:3, :3].T, np.eye(3), atol=1e-6)
    # the aligned frame keeps the camera's heading: the optical axis stays in the aligned y-z plane, forward
    forward = W[:3, :3] @ T[:3, 2]
    assert abs(forward[0]) < 1e-6 and forward[2] > 0


@pytest.mark.parametrize("up_y", [-1.0, 1.0])
def test_alignment_of_exactly_level_or_upside_down_camera_is_finite(up_y):
    # camera -y (or +y) exactly along world z: upstream's axis is 0/0 = NaN; ours is a proper rotation
    T = np.eye(4)
    T[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]) if up_y < 0 else np.array(
        [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    W = world_to_aligned_camera(torch.tensor(T, dtype=torch.float32)).double().numpy()
    assert np.isfinite(W).all()
    assert np.allclose(W[:3, :3] @ [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], atol=1e-6)


def test_volume_placement_follows_frustum_hull_and_fixed_height():
    K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    # one camera looking straight down from 2 m: hull x = [-1.92, 1.92] + 5.0, y = [-1.44, 1.44] - 3.0
    T = np.eye(4)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = [5.0, -3.0, 2.0]
    origin = place_fragment_volume(torch.tensor(K[None], dtype=torch.float32),
                                   torch.tensor(T[None], dtype=torch.float32), (640, 480))
    # centre 5.0 / 0.04 = 125 -> 128 (nearest multiple of 8); -3.0 / 0.04 = -75 -> -72; z always -8
    assert origin.tolist() == [128 - 48, -72 - 48, -8]


def test_derive_rejects_bad_inputs():
    K = np.eye(3)[None].repeat(2, 0)
    T = np.eye(4)[None].repeat(3, 0)
    with pytest.raises(GeometryError, match="expected V intrinsics"):
        derive_fragment_geometry(K, T)
    T = np.eye(4)[None].repeat(2, 0)
    T[1, 0, 3] = np.nan
    with pytest.raises(GeometryError, match="NaN"):
        derive_fragment_geometry(K, T)
    with pytest.raises(GeometryError, match="focal"):
        derive_fragment_geometry(np.zeros((2, 3, 3)), np.eye(4)[None].repeat(2, 0))


def test_float32_recipes_round_every_step_left_to_right():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(3, 4)).astype(np.float32)
    X = rng.normal(size=(50, 3)).astype(np.float32) * 3
    out = affine_f32(torch.from_numpy(M), torch.from_numpy(X)).numpy()
    f = np.float32
    for n in range(len(X)):
        for r in range(3):
            expected = f(f(f(f(X[n, 0] * M[r, 0]) + f(X[n, 1] * M[r, 1])) + f(X[n, 2] * M[r, 2])) + M[r, 3])
            assert out[n, r] == expected
    coords = torch.tensor([[0, 1, 95], [-16, 40, -8]])
    origin = torch.tensor([0.64, 0.96, -0.32])
    pos = voxel_positions_f32(coords, 0.04, origin).numpy()
    expected = (coords.numpy().astype(np.float32) * f(0.04)).astype(np.float32) + origin.numpy()
    assert np.array_equal(pos, expected)
