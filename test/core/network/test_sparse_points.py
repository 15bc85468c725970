"""Point <-> voxel ops of the pure-PyTorch backend against hand-computed references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sparse_reference import reference_hash

from neuralrecon_ros.core.network import sparse
from neuralrecon_ros.core.network.sparse import (
    CoordinateError,
    FeatureError,
    PointTensor,
    SparseTensor,
    initial_voxelize,
    point_to_voxel,
    voxel_to_point,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CORNERS = list(itertools.product((0, 1), repeat=3))  # kernel-2 order: (bx, by, bz), z fastest


pytestmark = pytest.mark.usefixtures("torch_backend")




def hand_weights(p: list[float], stride: int) -> list[float]:
    """Trilinear weight of each corner floor(p/s)*s + b*s, b in kernel-2 order."""
    frac = [(v / stride) - math.floor(v / stride) for v in p]
    return [math.prod(f if bit else 1.0 - f for f, bit in zip(frac, b)) for b in CORNERS]


@pytest.mark.parametrize("device", DEVICES)
def test_initial_voxelize_unique_mean_hash_order(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(400, 3, generator=gen, dtype=torch.float64) * 6.0 - 3.0  # metres, negative too
    batch = torch.randint(0, 2, (400, 1), generator=gen).double()
    points = torch.cat([coords, batch], dim=1).float()
    feats = torch.randn(400, 5, generator=gen)
    z = PointTensor(feats.to(device), points.to(device))
    voxel_size = 0.75
    x = initial_voxelize(z, voxel_size)
    scaled = points[:, :3] / voxel_size
    # z now holds the scaled coordinates (upstream behaviour)
    assert torch.equal(z.coords.cpu(), torch.cat([scaled, points[:, 3:]], dim=1))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (p, b) in enumerate(zip(scaled.tolist(), points[:, 3].tolist())):
        groups.setdefault((*(math.floor(v) for v in p), int(b)), []).append(i)
    expected_order = sorted(groups, key=lambda c: reference_hash(*c))
    assert x.coords.cpu().tolist() == [list(c) for c in expected_order]
    expected_feats = torch.stack([feats[groups[c]].mean(dim=0) for c in expected_order])
    torch.testing.assert_close(x.feats.cpu(), expected_feats, rtol=1e-6, atol=1e-6)
    assert x.stride == 1 and x.coords.dtype == torch.int32


def test_initial_voxelize_twice_scales_twice() -> None:
    points = torch.tensor([[0.013, -0.021, 0.05, 0.0], [0.3, 0.2, -0.1, 0.0]])
    z = PointTensor(torch.ones(2, 1), points.clone())
    initial_voxelize(z, 0.04)
    x = initial_voxelize(z, 0.04)
    twice = (points[:, :3] / 0.04) / 0.04
    assert torch.equal(z.coords[:, :3], twice)
    assert x.coords[:, :3].tolist() == sorted(
        torch.floor(twice).int().tolist(), key=lambda c: reference_hash(*c, 0)
    )


def test_point_to_voxel_mean_zero_fill_and_drop() -> None:
    voxels = torch.tensor([[0, 0, 0, 0], [-2, 2, 0, 0], [2, 2, 2, 0], [0, 0, 0, 1]], dtype=torch.int32)
    x = SparseTensor(torch.zeros(4, 2), voxels, stride=2)
    points = torch.tensor(
        [
            [0.5, 1.9, 0.0, 0],  # -> (0,0,0,b0)
            [1.5, 0.1, 1.99, 0],  # -> (0,0,0,b0)
            [-0.1, 3.0, 1.0, 0],  # -> (-2,2,0)
            [7.0, 7.0, 7.0, 0],  # no voxel: dropped
            [0.2, 0.2, 0.2, 1],  # -> (0,0,0,b1)
        ]
    )
    feats = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [100.0, 100.0], [7.0, 70.0]])
    z = PointTensor(feats, points)
    y = point_to_voxel(x, z)
    assert y.coords is x.coords and y.cache is x.cache and y.stride == 2
    expected = torch.tensor([[2.0, 20.0], [5.0, 50.0], [0.0, 0.0], [7.0, 70.0]])
    torch.testing.assert_close(y.feats, expected)
    # the assignment is cached per stride and reused even if the coordinates change (upstream semantics)
    assert list(z.vox_cache) == [2]
    z.coords = z.coords + 100.0
    again = point_to_voxel(x, z.replace_feats(feats * 2))
    torch.testing.assert_close(again.feats, expected * 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 4])
def test_voxel_to_point_trilinear_all_corners(stride: int, device: str) -> None:
    base = [-4 * stride, 2 * stride, -stride]
    voxels = torch.tensor(
        [[base[0] + bx * stride, base[1] + by * stride, base[2] + bz * stride, 0] for bx, by, bz in CORNERS],
        dtype=torch.int32,
    )
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])  # arbitrary voxel order
    voxels = voxels[perm]
    feats = torch.randn(8, 3, dtype=torch.float64)
    x = SparseTensor(feats.to(device), voxels.to(device), stride)
    p = [base[0] + 0.3 * stride, base[1] + 0.85 * stride, base[2] + 0.5 * stride]
    z = PointTensor(
        torch.zeros(1, 1, dtype=torch.float64, device=device),
        torch.tensor([[*p, 0.0]], dtype=torch.float64, device=device),
    )
    out = voxel_to_point(x, z).cpu()
    w = hand_weights(p, stride)
    row_of = {tuple(v[:3]): i for i, v in enumerate(voxels.tolist())}
    expected = sum(
        w[k] * feats[row_of[(base[0] + b[0] * stride, base[1] + b[1] * stride, base[2] + b[2] * stride)]]
        for k, b in enumerate(CORNERS)
    ) / (sum(w) + 1e-8)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-12)
    corners, weights = z.devox_cache[stride]
    assert corners.shape == (1, 8) and weights.shape == (1, 8)
    torch.testing.assert_close(weights[0].cpu(), torch.tensor(w, dtype=torch.float64) / (sum(w) + 1e-8))


def test_voxel_to_point_reproduces_linear_field() -> None:
    axis = torch.arange(-3, 3)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3) * 2
    coords = torch.cat([cells, torch.zeros(cells.shape[0], 1, dtype=torch.long)], dim=1).int()
    a = torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64)
    feats = (cells.double() @ a + 3.0)[:, None]
    x = SparseTensor(feats, coords, stride=2)
    gen = torch.Generator().manual_seed(1)
    pts = torch.rand(50, 3, generator=gen, dtype=torch.float64) * 9.5 - 6.0  # strictly inside the grid
    z = PointTensor(torch.zeros(50, 1, dtype=torch.float64), torch.cat([pts, torch.zeros(50, 1)], dim=1))
    out = voxel_to_point(x, z)[:, 0]
    torch.testing.assert_close(out, (pts @ a + 3.0) / (1 + 1e-8), rtol=0, atol=1e-9)


def test_voxel_to_point_missing_corners_renormalised() -> None:
    p = [-0.25, 1.6, 3.1]  # base corner (-1, 1, 3) at stride 1
    present = [0, 3, 4, 6]  # corner indices (kernel-2 order) that exist as voxels
    voxels = torch.tensor(
        [[-1 + CORNERS[k][0], 1 + CORNERS[k][1], 3 + CORNERS[k][2], 0] for k in present], dtype=torch.int32
    )
    feats = torch.tensor([[1.0], [10.0], [100.0], [1000.0]], dtype=torch.float64)
    x = SparseTensor(feats, voxels)
    z = PointTensor(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[*p, 0.0]], dtype=torch.float64))
    out = voxel_to_point(x, z)
    w = hand_weights(p, 1)
    total = sum(w[k] for k in present)
    expected = sum(w[k] * f for k, f in zip(present, [1.0, 10.0, 100.0, 1000.0])) / (total + 1e-8)
    assert out.item() == pytest.approx(expected, abs=1e-12)
    corners, _ = z.devox_cache[1]
    assert [i for i in range(8) if corners[0, i] >= 0] == present
    # no corner at all -> 0
    far = PointTensor(
        torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[50.5, 0.5, 0.5, 0]], dtype=torch.float64)
    )
    assert voxel_to_point(x, far).item() == 0.0


def test_voxel_to_point_nearest_and_stride_keyed_cache() -> None:
    voxels = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[1.0], [2.0], [4.0]]), voxels)
    points = torch.tensor([[0.25, 0.5, 0.0, 0.0]])
    z = PointTensor(torch.zeros(1, 1), points)
    near = voxel_to_point(x, z, nearest=True)
    w = hand_weights([0.25, 0.5, 0.0], 1)
    present_sum = w[0] + w[2] + w[4]  # corners (0,0,0), (0,1,0), (1,0,0)
    assert near.item() == pytest.approx(w[0] / present_sum * 1.0, rel=1e-6)
    # A different stride-1 tensor meets the cached corners (indices into x's rows): upstream reuses them.
    other = SparseTensor(torch.tensor([[10.0], [20.0], [40.0]]), voxels[[2, 0, 1]])
    reused = voxel_to_point(other, z)
    assert reused.item() == pytest.approx(w[0] / present_sum * 10.0, rel=1e-6)


def test_bad_point_input_is_rejected() -> None:
    with pytest.raises(CoordinateError, match=r"\(P, 4\)"):
        PointTensor(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(CoordinateError, match="floating"):
        PointTensor(torch.zeros(3, 2), torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(FeatureError, match=r"\(3, C\)"):
        PointTensor(torch.zeros(2, 2), torch.zeros(3, 4))
    z = PointTensor(torch.zeros(2, 1), torch.tensor([[0.0, 0.0, float("nan"), 0.0], [1.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(CoordinateError, match="finite"):
        initial_voxelize(z)


def test_corners_from_kernel_map_equal_direct_search() -> None:
    """Once the family has the kernel-3 map, corners come from it; they must equal a direct search,
    including points whose base voxel is missing."""
    gen = torch.Generator().manual_seed(4)
    pts = torch.rand(600, 3, generator=gen) * 16.0 - 8.0
    points = torch.cat([pts, torch.zeros(600, 1)], dim=1)
    for stride in (1, 2):
        cells = torch.unique(torch.floor(pts[:300] / stride).int() * stride, dim=0)  # half the points' voxels
        coords = torch.cat([cells, torch.zeros(cells.shape[0], 1, dtype=torch.int32)], dim=1)
        coords = coords[torch.randperm(coords.shape[0], generator=gen)]  # not in sorted order
        feats = torch.randn(coords.shape[0], 3, generator=gen)
        plain = SparseTensor(feats, coords, stride)
        searched = PointTensor(torch.zeros(600, 1), points.clone())
        direct = voxel_to_point(plain, searched)
        with_map = SparseTensor(feats, coords, stride)
        sparse.sparse_conv3d(with_map, torch.zeros(27, 3, 1), 3)  # builds the family's kernel-3 map
        mapped = PointTensor(torch.zeros(600, 1), points.clone())
        via_map = voxel_to_point(with_map, mapped)
        assert torch.equal(mapped.devox_cache[stride][0], searched.devox_cache[stride][0])
        assert bool((mapped.devox_cache[stride][0][:, 0] == -1).any())  # some base voxels were missing
        torch.testing.assert_close(via_map, direct, rtol=0, atol=0)


def test_empty_inputs_give_empty_outputs() -> None:
    z = PointTensor(torch.zeros(0, 3), torch.zeros(0, 4))
    x = initial_voxelize(z, 0.5)
    assert x.num_voxels == 0 and x.feats.shape == (0, 3)
    torch.manual_seed(0)
    y = sparse.SparseConv3d(3, 4, 3)(x)
    down = sparse.SparseConv3d(4, 4, 2, 2)(y)
    up = sparse.SparseConv3d(4, 2, 2, 2, transposed=True)(down)
    assert (y.feats.shape, down.feats.shape, up.feats.shape) == ((0, 4), (0, 4), (0, 2))
    assert down.coords.shape == (0, 4) and down.stride == 2
    assert voxel_to_point(y, z).shape == (0, 4)
    others = PointTensor(torch.ones(2, 4), torch.rand(2, 4))
    assert torch.equal(voxel_to_point(y, others), torch.zeros(2, 4))
    assert point_to_voxel(y, others).feats.shape == (0, 4)
