"""GRU fusion: the reset-gate quirk against an explicit formula, the clean variant, and the global stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.network.gru_fusion import ConvGRU, GRUFusion, SConv3d, TSDFSubstitution
from neuralrecon_ros.core.network.sparse import PointTensor, set_backend, torchsparse_hash


@pytest.fixture(autouse=True)
def torch_backend():
    set_backend("torch")


def _points(n: int, spacing: float, seed: int = 0) -> torch.Tensor:
    """(n, 4) float32 points of a rotated lattice with ``spacing`` (metres), batch column 0."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(20**3, generator=g)[:n]
    lattice = torch.stack([cells // 400, (cells // 20) % 20, cells % 20], dim=1).float() * spacing
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    pts = lattice @ q.T - 0.37
    return torch.cat([pts, torch.zeros(n, 1)], dim=1)


def _hash_order(cells: np.ndarray) -> dict[tuple[int, int, int], int]:
    """Rank of each distinct cell in ascending torchsparse hash (torchsparse's voxel order)."""
    unique = np.unique(cells, axis=0)
    coords = torch.from_numpy(np.concatenate([unique, np.zeros((len(unique), 1), np.int64)], 1).astype(np.int32))
    order = torch.argsort(torchsparse_hash(coords)).numpy()
    return {tuple(unique[i]): rank for rank, i in enumerate(order)}


def test_reset_gate_quirk_equals_explicit_formula():
    """Upstream call sequence convz(hx) then convr(hx) on one point tensor: Gr sees coordinates divided by
    the voxel size twice and devoxelises with Gz's trilinear corners (ranks in Gz's hash order)."""
    torch.manual_seed(1)
    voxel = 0.08
    convz, convr = SConv3d(6, 3, voxel).eval(), SConv3d(6, 3, voxel).eval()
    points = _points(300, voxel)
    feats = torch.randn(300, 6)
    hx = PointTensor(feats, points)
    with torch.no_grad():
        convz(hx)
        got = convr(hx)

    once = points[:, :3] / voxel
    twice = once / voxel
    z_rank = _hash_order(torch.floor(once).long().numpy())
    r_cells = torch.floor(twice).long().numpy()
    r_rank = _hash_order(r_cells)
    assert len(r_rank) == 300  # every point alone in its Gr cell, no two cells adjacent -> centre tap only
    gathered = np.zeros((300, 6), np.float32)
    gathered[[r_rank[tuple(c)] for c in r_cells]] = feats.numpy()  # Gr voxel features in Gr's hash order
    centre = gathered @ convr.net.kernel[13].detach().numpy()
    expected = convr.point_transforms(feats).detach().numpy().astype(np.float64)
    base = torch.floor(once).long().numpy()
    frac = (once - torch.floor(once)).double().numpy()
    for p in range(300):
        corners, weights = [], []
        for bx in (0, 1):
            for by in (0, 1):
                for bz in (0, 1):  # z fastest: torchsparse's kernel-2 order
                    cell = tuple(base[p] + (bx, by, bz))
                    w = (frac[p, 0] if bx else 1 - frac[p, 0]) * (frac[p, 1] if by else 1 - frac[p, 1]) * (
                        frac[p, 2] if bz else 1 - frac[p, 2])
                    corners.append(z_rank.get(cell, -1))
                    weights.append(w if cell in z_rank else 0.0)
        weights = np.array(weights) / (sum(weights) + 1e-8)
        expected[p] += sum(w * centre[c] for c, w in zip(corners, weights) if c >= 0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def _upstream_sequence(gru: ConvGRU, h: torch.Tensor, x: torch.Tensor, points: torch.Tensor,
                       quirk: bool) -> torch.Tensor:
    """ConvGRU written naively: every gate voxelises its own input (Gr reuses hx when ``quirk``)."""
    hx = PointTensor(torch.cat([h, x], dim=1), points)
    z = torch.sigmoid(gru.convz(hx))
    r = torch.sigmoid(gru.convr(hx if quirk else PointTensor(hx.feats, points)))
    q = torch.tanh(gru.convq(PointTensor(torch.cat([r * h, x], dim=1), points)))
    return (1 - z) * h + z * q


@pytest.mark.parametrize("quirk", [True, False])
def test_conv_gru_shared_voxelisation_is_exact(quirk):
    torch.manual_seed(2)
    gru = ConvGRU(8, 0.04, reset_gate_quirk=quirk).eval()
    points = _points(2000, 0.04, seed=3)
    h, x = torch.randn(2000, 8), torch.randn(2000, 8)
    with torch.no_grad():
        assert torch.equal(gru(h, x, points), _upstream_sequence(gru, h, x, points, quirk))


def test_clean_reset_gate_differs_from_quirk():
    torch.manual_seed(4)
    gru = ConvGRU(8, 0.04).eval()
    points = _points(2000, 0.04, seed=5)
    h, x = torch.randn(2000, 8), torch.randn(2000, 8)
    with torch.no_grad():
        quirky = gru(h, x, points)
        gru.reset_gate_quirk = False
        clean = gru(h, x, points)
    assert (quirky - clean).abs().max() > 1e-3


def test_hidden_state_union_and_substitution():
    torch.manual_seed(6)
    fusion = GRUFusion().eval()
    W = torch.eye(4)
    level = 0  # 24^3 grid of 0.16 m voxels; volume origins in finest voxels (multiples of 8)
    first = torch.tensor([[0, 0, 0], [1, 2, 3], [23, 23, 23], [5, 5, 5]])
    feats = torch.randn(4, 96)
    feats[3] = 0  # an all-zero row is not part of the fused set (upstream's dense "any != 0" test)
    with torch.no_grad():
        fused = fusion(level, first, feats, torch.tensor([0, 0, 0]), torch.zeros(3), W)
    assert fused.coords.tolist() == [[0, 0, 0], [1, 2, 3], [23, 23, 23]]  # x-major order
    # second volume shifted by +8 grid cells in x (32 finest voxels): (0,0,0) and (1,2,3) fall outside
    second = torch.tensor([[10, 0, 0], [15, 23, 23]])
    with torch.no_grad():
        fused = fusion(level, second, torch.randn(2, 96), torch.tensor([32, 0, 0]), torch.tensor([1.28, 0, 0]), W)
    # union with the stored voxel (23,23,23) -> local (15,23,23) already current; sorted x-major
    assert fused.coords.tolist() == [[10, 0, 0], [15, 23, 23]]
    store = fusion.hidden[level]
    # outside entries first (upstream storage order), then the new set in global coordinates
    assert store.coords.tolist() == [[0, 0, 0], [1, 2, 3], [18, 0, 0], [23, 23, 23]]
    assert torch.equal(store.values[2:], fused.feats)
    fusion.reset_state()
    assert fusion.hidden == [None, None, None]


def _dense_substitution(stored: dict, coords: np.ndarray, tsdf: np.ndarray, origin: np.ndarray) -> dict:
    """Upstream's FULL rule with two dense 96^3 grids filled with 1 (reference for the sparse version)."""
    glob, cur = np.ones((96, 96, 96), np.float32), np.ones((96, 96, 96), np.float32)
    keep = {}
    for c, v in stored.items():
        local = np.subtract(c, origin)
        if ((local >= 0) & (local < 96)).all():
            glob[tuple(local)] = v
        else:
            keep[c] = v
    cur[tuple(coords.T)] = tsdf
    for local in np.argwhere((np.abs(glob) < 1) | (np.abs(cur) < 1)):
        keep[tuple((local + origin).tolist())] = cur[tuple(local)]
    return keep


def test_tsdf_substitution_matches_dense_rule():
    rng = np.random.default_rng(7)
    sub = TSDFSubstitution()
    stored: dict = {}
    for origin in (np.array([0, 0, -8]), np.array([40, -16, -8])):
        coords = np.unique(rng.integers(0, 96, size=(3000, 3)), axis=0)
        tsdf = rng.uniform(-1.5, 1.5, size=len(coords)).astype(np.float32)
        new_coords, new_values = sub(torch.from_numpy(coords), torch.from_numpy(tsdf), torch.from_numpy(origin))
        stored = _dense_substitution(stored, coords, tsdf, origin)
        ours = dict(zip(map(tuple, sub.volume.coords.tolist()), sub.volume.values.tolist()))
        assert ours == pytest.approx(stored)
        # the new set: ascending (x, y, z) inside the volume, 1.0 where a stored voxel was not re-predicted
        local = new_coords.numpy() - origin
        assert (np.diff(np.ravel_multi_index(local.T, (96, 96, 96))) > 0).all()
    # both value sources occur: 1.0 fill, and a kept prediction with |tsdf| >= 1 where the store had |tsdf| < 1
    assert (new_values == 1.0).any() and ((new_values.abs() >= 1) & (new_values != 1.0)).any()
