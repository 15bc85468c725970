"""The torchsparse adapter, and our backend against real torchsparse 1.4 (only when it is importable).

Comparisons use a single batch index: torchsparse 1.4's CPU kernel hash uses the batch of the first
coordinate for every query (a library bug), so multi-batch kernel maps differ on CPU by design.
"""

from __future__ import annotations

import pytest
import torch

from neuralrecon_ros.core.network import sparse
from neuralrecon_ros.core.network.sparse import (
    BackendError,
    KernelMapError,
    PointTensor,
    SparseConv3d,
    SparseTensor,
    initial_voxelize,
    point_to_voxel,
    sparse_cat,
    torchsparse_hash,
    voxel_to_point,
)

if not sparse.torchsparse_available():
    pytest.skip("torchsparse (v1.4 API) is not importable; adapter tests need it", allow_module_level=True)

import torchsparse.nn.functional as ts_functional

BACKENDS = ("torch", "torchsparse")


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = sparse.get_backend()
    yield
    sparse.set_backend(previous)


def room_points(n: int, seed: int) -> torch.Tensor:
    """Float (n, 4) points (x, y, z, batch 0) on two noisy planes, in voxel units, negative coords too."""
    gen = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, 2, generator=gen) * 24.0 - 12.0
    noise = torch.randn(n, generator=gen) * 0.7
    half = n // 2
    xyz = torch.empty(n, 3)
    xyz[:half] = torch.stack([uv[:half, 0], uv[:half, 1], noise[:half] - 3.0], dim=1)  # floor
    xyz[half:] = torch.stack([noise[half:] + 5.0, uv[half:, 0], uv[half:, 1]], dim=1)  # wall
    return torch.cat([xyz, torch.zeros(n, 1)], dim=1)


def test_hash_equals_torchsparse() -> None:
    gen = torch.Generator().manual_seed(0)
    coords = torch.randint(-(2**31), 2**31 - 1, (5000, 4), generator=gen, dtype=torch.int64).to(torch.int32)
    assert torch.equal(torchsparse_hash(coords), ts_functional.sphash(coords))


def run_family(backend: str, seed: int = 0):
    """An SPVCNN-shaped chain (every conv kind, strides 1/2/4, point branch) on one backend."""
    sparse.set_backend(backend)
    torch.manual_seed(seed)
    stem, down1, res1, down2, res2 = (
        SparseConv3d(5, 6, 3),
        SparseConv3d(6, 6, 2, 2),
        SparseConv3d(6, 8, 3),
        SparseConv3d(8, 8, 2, 2),
        SparseConv3d(8, 8, 3),
    )
    up1, res3, up2, short = (
        SparseConv3d(8, 6, 2, 2, transposed=True),
        SparseConv3d(14, 6, 3),
        SparseConv3d(6, 6, 2, 2, transposed=True),
        SparseConv3d(12, 4, 1),
    )
    gen = torch.Generator().manual_seed(seed + 1)
    points = room_points(3000, seed)
    z = PointTensor(torch.randn(3000, 5, generator=gen), points * 0.08)
    with torch.no_grad():
        x0 = stem(initial_voxelize(z, 0.08))
        z0 = z.replace_feats(voxel_to_point(x0, z))
        x1 = res1(down1(point_to_voxel(x0, z0)))
        x2 = res2(down2(x1))
        z1 = z0.replace_feats(voxel_to_point(x2, z0))
        y3 = res3(sparse_cat([up1(point_to_voxel(x2, z1)), x1]))
        y4 = short(sparse_cat([up2(y3), x0]))
        out = voxel_to_point(y4, z1)
    return {"x0": x0, "x1": x1, "x2": x2, "y3": y3, "y4": y4, "out": out, "z": z}


def test_family_matches_torchsparse() -> None:
    ours, theirs = run_family("torch"), run_family("torchsparse")
    # identical voxel sets AND order at every stage (initial voxelisation in ascending-hash order,
    # down-sampled sets in (batch, x, y, z) order, transposed convs back on the original voxels)
    for key in ("x0", "x1", "x2", "y3", "y4"):
        assert torch.equal(ours[key].coords, theirs[key].coords), key
        assert ours[key].stride == theirs[key].stride
        torch.testing.assert_close(ours[key].feats, theirs[key].feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["out"], theirs["out"], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours["z"].coords, theirs["z"].coords)
    for stride in (1, 4):
        c_ours, w_ours = ours["z"].devox_cache[stride]
        c_theirs, w_theirs = theirs["z"].devox_cache[stride]
        assert torch.equal(c_ours, c_theirs)
        assert torch.equal(w_ours, w_theirs)  # same float recipe -> bit-identical weights
    # both build the same 5 maps once: submanifold at strides 1, 2, 4 and down from strides 1, 2
    assert ours["x0"].cache.builds == 5
    assert len(theirs["x0"].cache.backend_state["torchsparse"]["kmaps"]) == 5


def test_adapter_builds_each_map_once_and_shares_kernel() -> None:
    sparse.set_backend("torchsparse")
    conv = SparseConv3d(3, 2, 3)
    coords = torch.floor(room_points(500, 3)[:, :3]).int().unique(dim=0)
    coords = torch.cat([coords, torch.zeros(coords.shape[0], 1, dtype=torch.int32)], dim=1)
    x = SparseTensor(torch.randn(coords.shape[0], 3), coords)
    y = conv(x)
    kmaps = x.cache.backend_state["torchsparse"]["kmaps"]
    assert len(kmaps) == 1
    first_map = next(iter(kmaps.values()))
    conv(x.replace_feats(x.feats * 2))
    assert len(kmaps) == 1 and next(iter(kmaps.values())) is first_map
    # gradient flows into our parameter through torchsparse
    assert y.feats.requires_grad and y.feats.grad_fn is not None


def test_set_backend_choices() -> None:
    assert sparse.set_backend("auto") == "torchsparse"
    assert sparse.set_backend("torch") == "torch"
    with pytest.raises(BackendError, match="unknown sparse backend"):
        sparse.set_backend("minkowski")


def test_adapter_transposed_without_down_conv_is_named_error() -> None:
    sparse.set_backend("torchsparse")
    coords = torch.tensor([[0, 0, 0, 0], [2, 0, 0, 0], [0, 2, 2, 0]], dtype=torch.int32)
    x = SparseTensor(torch.randn(3, 2), coords, stride=2)
    with pytest.raises(KernelMapError, match="matching down conv"):
        SparseConv3d(2, 2, 2, 2, transposed=True)(x)
