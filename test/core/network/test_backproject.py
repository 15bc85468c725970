"""Back-projection against analytic projections of linear feature maps."""

from __future__ import annotations

import numpy as np
import torch

from neuralrecon_ros.core.geometry import look_at
from neuralrecon_ros.core.network.backproject import back_project


def _proj(K: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    P = np.eye(4)
    P[:3, :4] = K @ np.linalg.inv(T_world_cam)[:3, :4]
    return P


def test_features_average_valid_views_and_depth_is_l2_normalised():
    H, W = 30, 40
    K = np.array([[30.0, 0.0, 19.5], [0.0, 30.0, 14.5], [0.0, 0.0, 1.0]])
    target = np.array([1.0, 1.0, 0.5])
    poses = [look_at(np.array([1.0, -1.0, 1.0]), target), look_at(np.array([2.5, 1.2, 1.2]), target)]
    proj = np.stack([_proj(K, T) for T in poses])
    # channel 0 = column index, channel 1 = row index: bilinear sampling of a linear map is exact
    cols, rows = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    feats = torch.from_numpy(np.stack([np.stack([cols, rows])] * 2))

    rng = np.random.default_rng(0)
    coords = torch.from_numpy(rng.integers(-10, 60, size=(400, 3)))
    origin = torch.tensor([0.0, 0.0, -0.32])
    out = back_project(coords, origin, 0.04, feats, torch.tensor(proj, dtype=torch.float32))

    world = coords.numpy() * 0.04 + origin.numpy()
    hom = np.concatenate([world, np.ones((len(world), 1))], axis=1)
    image = np.einsum("vij,nj->vni", proj[:, :3], hom)
    z = image[..., 2]
    u, v = image[..., 0] / z, image[..., 1] / z
    margin = 1e-3  # leave out voxels that sit on the border within float32 round-off
    sure = (np.abs(u - (W - 1) / 2) - (W - 1) / 2 < -margin) | (np.abs(u - (W - 1) / 2) - (W - 1) / 2 > margin)
    sure &= (np.abs(v - (H - 1) / 2) - (H - 1) / 2 < -margin) | (np.abs(v - (H - 1) / 2) - (H - 1) / 2 > margin)
    valid = (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1) & (z > 0)
    keep = sure.all(axis=0)
    assert keep.sum() > 300
    count = valid.sum(axis=0)
    assert 0 < (count == 2).sum() and 0 < (count == 1).sum() and 0 < (count == 0).sum()
    assert np.array_equal(out.count.numpy()[keep], count[keep])
    assert np.array_equal(out.valid.numpy()[:, keep], valid[:, keep])

    divisor = np.maximum(count, 1)
    mean_u = np.where(valid, u, 0).sum(0) / divisor
    mean_v = np.where(valid, v, 0).sum(0) / divisor
    mean_z = np.where(valid, z, 0).sum(0) / divisor
    seen = mean_z > 0
    centred = mean_z - mean_z[seen].mean()
    depth = np.where(seen, centred / (np.linalg.norm(centred[seen]) + 1e-5), 0)
    got = out.features.numpy()
    assert got.shape == (400, 3)
    np.testing.assert_allclose(got[keep, 0], mean_u[keep], atol=2e-3)
    np.testing.assert_allclose(got[keep, 1], mean_v[keep], atol=2e-3)
    np.testing.assert_allclose(got[keep, 2], depth[keep], atol=1e-4)
    assert np.all(got[count == 0] == 0)
