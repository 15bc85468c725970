"""Sparse convs of the pure-PyTorch backend against dense torch conv3d / conv_transpose3d.

Each case scatters sparse features into a dense volume (cells of the tensor stride, origin aligned to
the down-sampling grid), maps the torchsparse kernel to a dense weight with the index formulas of
facts §3.4 (written out here, independent of the backend's offset table), and compares at the sparse
output sites. Coordinates include negative values and several batch indices.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuralrecon_ros.core.network import sparse
from neuralrecon_ros.core.network.sparse import (
    CoordinateError,
    FeatureError,
    KernelMapError,
    SparseBatchNorm,
    SparseConv3d,
    SparseReLU,
    SparseTensor,
    UnsupportedConvError,
    kernel_map,
    kernel_offsets,
    sparse_cat,
    sparse_conv3d,
)
from neuralrecon_ros.core.network.sparse import conv as conv_module

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIDE = 12  # cells per axis of the random grids, centred on 0 (so about half the coordinates are negative)


# The dense comparisons also run through the torchsparse adapter when torchsparse is importable.
BACKENDS = ["torch"] + (["torchsparse"] if sparse.torchsparse_available() else [])


pytestmark = pytest.mark.usefixtures("torch_backend")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    sparse.set_backend(request.param)
    return request.param


def batches_for(backend: str, wanted: int) -> int:
    # torchsparse 1.4's CPU kernel hash takes the batch index of the first voxel for every query (a
    # library bug), so its multi-batch maps are wrong on CPU: compare it on one batch.
    return 1 if backend == "torchsparse" else wanted


def random_coords(stride: int, batches: int, density: float, seed: int) -> torch.Tensor:
    """Unique (x, y, z, batch) int32 coords on the stride lattice, cells in [-SIDE/2, SIDE/2)."""
    gen = torch.Generator().manual_seed(seed)
    axis = torch.arange(-SIDE // 2, SIDE // 2)
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    rows = []
    for b in range(batches):
        keep = torch.rand(cells.shape[0], generator=gen) < density
        chosen = cells[keep] * stride
        rows.append(torch.cat([chosen, torch.full((chosen.shape[0], 1), b)], dim=1))
    coords = torch.cat(rows).to(torch.int32)
    return coords[torch.randperm(coords.shape[0], generator=gen)]  # arbitrary row order


def to_dense(feats: torch.Tensor, coords: torch.Tensor, cell: int, origin: int, size: int, batches: int):
    """(batches, C, size, size, size) volume; voxel c sits at index (c - origin) / cell."""
    dense = feats.new_zeros((batches, feats.shape[1], size, size, size))
    idx = ((coords[:, :3].long() - origin) // cell).cpu()
    b = coords[:, 3].long().cpu()
    assert bool((idx >= 0).all()) and bool((idx < size).all())
    dense[b, :, idx[:, 0], idx[:, 1], idx[:, 2]] = feats
    return dense


def at_sites(dense: torch.Tensor, coords: torch.Tensor, cell: int, origin: int) -> torch.Tensor:
    idx = ((coords[:, :3].long() - origin) // cell).cpu()
    b = coords[:, 3].long().cpu()
    return dense[b, :, idx[:, 0], idx[:, 1], idx[:, 2]]


def dense_weight_k3(kernel: torch.Tensor) -> torch.Tensor:
    """(27, in, out) torchsparse kernel -> conv3d weight (out, in, 3, 3, 3) over axes (x, y, z)."""
    w = kernel.new_zeros((kernel.shape[2], kernel.shape[1], 3, 3, 3))
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                w[:, :, dx + 1, dy + 1, dz + 1] = kernel[9 * (dz + 1) + 3 * (dy + 1) + (dx + 1)].t()
    return w


def dense_weight_k2(kernel: torch.Tensor) -> torch.Tensor:
    """(8, in, out) torchsparse kernel -> (out, in, 2, 2, 2) with k = 4 bx + 2 by + bz."""
    w = kernel.new_zeros((kernel.shape[2], kernel.shape[1], 2, 2, 2))
    for bx in (0, 1):
        for by in (0, 1):
            for bz in (0, 1):
                w[:, :, bx, by, bz] = kernel[4 * bx + 2 * by + bz].t()
    return w


def make_input(stride: int, batches: int, c_in: int, seed: int, device: str = "cpu", density: float = 0.35):
    coords = random_coords(stride, batches, density, seed).to(device)
    gen = torch.Generator().manual_seed(seed + 100)
    feats = torch.randn(coords.shape[0], c_in, generator=gen, dtype=torch.float64).to(device)
    return SparseTensor(feats, coords, stride)


def conv_module_f64(c_in: int, c_out: int, k: int, stride: int = 1, transposed: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    return SparseConv3d(c_in, c_out, k, stride, transposed).double()


def test_kernel_offsets_follow_torchsparse_order() -> None:
    k3 = kernel_offsets(3).tolist()
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                assert k3[9 * (dz + 1) + 3 * (dy + 1) + (dx + 1)] == [dx, dy, dz]
    k2 = kernel_offsets(2, stride=4).tolist()
    for bx in (0, 1):
        for by in (0, 1):
            for bz in (0, 1):
                assert k2[4 * bx + 2 * by + bz] == [4 * bx, 4 * by, 4 * bz]
    assert kernel_offsets(3, stride=2)[0].tolist() == [-2, -2, -2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_submanifold_k3_matches_dense(stride: int, device: str, backend: str) -> None:
    batches = batches_for(backend, 2)
    x = make_input(stride, batches=batches, c_in=3, seed=stride, device=device)
    conv = conv_module_f64(3, 5, 3).to(device)
    with torch.no_grad():
        y = conv(x)
    assert y.coords is x.coords and y.stride == stride
    origin, size = -(SIDE // 2) * stride, SIDE
    dense = to_dense(x.feats.cpu(), x.coords, stride, origin, size, batches)
    ref = F.conv3d(dense, dense_weight_k3(conv.kernel.detach().cpu()), padding=1)
    torch.testing.assert_close(y.feats.cpu(), at_sites(ref, x.coords, stride, origin), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_pointwise_k1_matches_dense(device: str, backend: str) -> None:
    x = make_input(2, batches=2, c_in=4, seed=7, device=device)
    conv = conv_module_f64(4, 6, 1).to(device)
    assert tuple(conv.kernel.shape) == (4, 6)
    with torch.no_grad():
        y = conv(x)
    origin = -(SIDE // 2) * 2
    dense = to_dense(x.feats.cpu(), x.coords, 2, origin, SIDE, 2)
    ref = F.conv3d(dense, conv.kernel.detach().cpu().t()[:, :, None, None, None])
    torch.testing.assert_close(y.feats.cpu(), at_sites(ref, x.coords, 2, origin), rtol=0, atol=1e-12)


def expected_parents(coords: torch.Tensor, stride: int) -> list[list[int]]:
    """Unique floor(c / 2s) * 2s in lexicographic (batch, x, y, z) order, with Python floor division."""
    step = 2 * stride
    parents = {(b, x // step * step, y // step * step, z // step * step) for x, y, z, b in coords.tolist()}
    return [[x, y, z, b] for b, x, y, z in sorted(parents)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_down_k2s2_matches_dense(stride: int, device: str, backend: str) -> None:
    batches = batches_for(backend, 3)
    x = make_input(stride, batches=batches, c_in=3, seed=10 + stride, device=device)
    conv = conv_module_f64(3, 4, 2, 2).to(device)
    with torch.no_grad():
        y = conv(x)
    assert y.stride == 2 * stride
    assert y.coords.tolist() == expected_parents(x.coords.cpu(), stride)
    # origin aligned to the 2s grid so that dense stride-2 windows are exactly the floor parents
    origin = -(SIDE // 2) * stride
    assert origin % (2 * stride) == 0
    dense = to_dense(x.feats.cpu(), x.coords, stride, origin, SIDE, batches)
    ref = F.conv3d(dense, dense_weight_k2(conv.kernel.detach().cpu()), stride=2)
    torch.testing.assert_close(y.feats.cpu(), at_sites(ref, y.coords, 2 * stride, origin), rtol=0, atol=1e-12)


def test_down_uses_floor_for_negative_coordinates(backend: str) -> None:
    coords = torch.tensor([[-1, -1, -1, 0], [-2, 0, 1, 0], [1, -3, 0, 0]], dtype=torch.int32)
    x = SparseTensor(torch.ones(3, 1, dtype=torch.float64), coords)
    kernel = torch.arange(1.0, 9.0, dtype=torch.float64).view(8, 1, 1)
    y = sparse_conv3d(x, kernel, 2, 2)
    # -1 -> -2 (floor), not 0 (truncation). Taps k = 4 bx + 2 by + bz, kernel[k] = k + 1:
    # (-1,-1,-1) = (-2,-2,-2) + (1,1,1) -> k 7; (-2,0,1) = (-2,0,0) + (0,0,1) -> k 1; (1,-3,0) -> (1,1,0) -> k 6
    assert y.coords.tolist() == [[-2, -2, -2, 0], [-2, 0, 0, 0], [0, -4, 0, 0]]
    assert y.feats[:, 0].tolist() == [8.0, 2.0, 7.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_transposed_k2s2_matches_dense(stride: int, device: str, backend: str) -> None:
    batches = batches_for(backend, 2)
    x = make_input(stride, batches=batches, c_in=3, seed=20 + stride, device=device)
    down = conv_module_f64(3, 5, 2, 2).to(device)
    up = conv_module_f64(5, 4, 2, 2, transposed=True, seed=1).to(device)
    assert tuple(up.kernel.shape) == (8, 5, 4)
    with torch.no_grad():
        coarse = down(x)
        gen = torch.Generator().manual_seed(5)
        coarse = coarse.replace_feats(
            torch.randn(coarse.feats.shape, generator=gen, dtype=torch.float64).to(device)
        )
        y = up(coarse)
    # lands on exactly the voxels (and row order) fed into the down conv
    assert torch.equal(y.coords, x.coords) and y.stride == stride
    origin = -(SIDE // 2) * stride
    dense_coarse = to_dense(coarse.feats.cpu(), coarse.coords, 2 * stride, origin, SIDE // 2, batches)
    wt = dense_weight_k2(up.kernel.detach().cpu()).transpose(0, 1)  # conv_transpose3d wants (in, out, ...)
    ref = F.conv_transpose3d(dense_coarse, wt, stride=2)
    torch.testing.assert_close(y.feats.cpu(), at_sites(ref, x.coords, stride, origin), rtol=0, atol=1e-12)


def test_gradients_match_dense() -> None:
    x = make_input(1, batches=1, c_in=2, seed=42)
    feats = x.feats.clone().requires_grad_(True)
    conv = conv_module_f64(2, 3, 3)
    y = conv(x.replace_feats(feats))
    (y.feats**2).sum().backward()
    origin = -(SIDE // 2)
    dense_feats = feats.detach().clone().requires_grad_(True)
    weight = dense_weight_k3(conv.kernel.detach()).requires_grad_(True)
    ref = at_sites(
        F.conv3d(to_dense(dense_feats, x.coords, 1, origin, SIDE, 1), weight, padding=1), x.coords, 1, origin
    )
    (ref**2).sum().backward()
    torch.testing.assert_close(feats.grad, dense_feats.grad, rtol=0, atol=1e-10)
    # kernel gradient mapped back through the same index formula
    torch.testing.assert_close(dense_weight_k3(conv.kernel.grad), weight.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("grad", [False, True])
def test_blocked_gather_gemm_equals_single_block(monkeypatch: pytest.MonkeyPatch, grad: bool) -> None:
    x = make_input(1, batches=2, c_in=3, seed=9, density=0.5)
    conv = conv_module_f64(3, 2, 3)
    with torch.set_grad_enabled(grad):
        whole = conv(x).feats
        monkeypatch.setattr(conv_module, "_BLOCK_ELEMENTS", 3 * 27 * 64)  # 64 rows per block
        blocked = conv(x).feats
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-12)


def test_kernel_maps_are_built_once_per_family(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"submanifold": 0, "down": 0}
    real_sub, real_down = kernel_map.build_submanifold_map, kernel_map.build_downsample_map

    def count_sub(*args, **kwargs):
        calls["submanifold"] += 1
        return real_sub(*args, **kwargs)

    def count_down(*args, **kwargs):
        calls["down"] += 1
        return real_down(*args, **kwargs)

    monkeypatch.setattr(kernel_map, "build_submanifold_map", count_sub)
    monkeypatch.setattr(kernel_map, "build_downsample_map", count_down)
    torch.manual_seed(0)
    net = {
        "stem": SparseConv3d(3, 4, 3),
        "down1": SparseConv3d(4, 4, 2, 2),
        "res1a": SparseConv3d(4, 4, 3),
        "res1b": SparseConv3d(4, 4, 3),
        "down2": SparseConv3d(4, 4, 2, 2),
        "res2": SparseConv3d(4, 4, 3),
        "up1": SparseConv3d(4, 4, 2, 2, transposed=True),
        "res3": SparseConv3d(8, 4, 3),
        "up2": SparseConv3d(4, 4, 2, 2, transposed=True),
        "res4": SparseConv3d(8, 4, 3),
        "short": SparseConv3d(8, 4, 1),
    }
    bn, relu = SparseBatchNorm(4).eval(), SparseReLU()

    def forward(x: SparseTensor) -> SparseTensor:
        x0 = relu(bn(net["stem"](x)))
        x1 = net["res1b"](net["res1a"](net["down1"](x0)))
        x2 = net["res2"](net["down2"](x1))
        y3 = net["res3"](sparse_cat([net["up1"](x2), x1]))
        y4 = sparse_cat([net["up2"](y3), x0])
        return net["res4"](y4).replace_feats(net["res4"](y4).feats + net["short"](y4).feats)

    coords = random_coords(1, batches=2, density=0.35, seed=1)
    x = SparseTensor(torch.randn(coords.shape[0], 3), coords)
    with torch.no_grad():
        first = forward(x)
        # maps: submanifold at strides 1, 2, 4 and down from strides 1, 2 -- each built exactly once
        assert calls == {"submanifold": 3, "down": 2}
        assert x.cache.builds == 5
        again = forward(x.replace_feats(x.feats))  # same family: everything reused
        assert calls == {"submanifold": 3, "down": 2}
        torch.testing.assert_close(again.feats, first.feats)
        fresh = forward(SparseTensor(x.feats, x.coords))  # new family: built again
        assert calls == {"submanifold": 6, "down": 4}
        torch.testing.assert_close(fresh.feats, first.feats)
    assert first.coords is x.coords and sorted(x.cache.coords) == [1, 2, 4]


def test_errors_are_specific() -> None:
    x = make_input(1, batches=1, c_in=3, seed=2)
    with pytest.raises(UnsupportedConvError, match="kernel_size=3, stride=2"):
        SparseConv3d(3, 3, 3, stride=2)
    with pytest.raises(KernelMapError, match="transposed conv"):
        SparseConv3d(3, 3, 2, 2, transposed=True).double()(x.replace_feats(x.feats))
    with pytest.raises(FeatureError, match="expects 5 input channels"):
        SparseConv3d(5, 3, 3)(x)
    with pytest.raises(CoordinateError, match="duplicate"):
        sparse_conv3d(
            SparseTensor(x.feats[:2], x.coords[[0, 0]]), torch.zeros(27, 3, 1, dtype=torch.float64), 3
        )
    with pytest.raises(CoordinateError, match="int32"):
        SparseTensor(x.feats, x.coords.long())
    with pytest.raises(FeatureError, match="rows"):
        SparseTensor(x.feats[:-1], x.coords)
    with pytest.raises(CoordinateError, match="multiples of 2"):
        sparse_conv3d(SparseTensor(x.feats, x.coords, 2), torch.zeros(8, 3, 1, dtype=torch.float64), 2, 2)
    # a second coordinate set for an already registered stride in the same family is refused
    with pytest.raises(KernelMapError, match="registered"):
        SparseTensor(x.feats[:-1], x.coords[:-1].clone(), 1, x.cache)


def test_autocast_blocks_stay_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast the blocks are computed out of place (mm with out= is not autocast-eligible)."""
    coords = random_coords(1, batches=1, density=0.5, seed=12)
    gen = torch.Generator().manual_seed(0)
    x = SparseTensor(torch.randn(coords.shape[0], 4, generator=gen), coords)
    torch.manual_seed(0)
    conv = SparseConv3d(4, 3, 3)
    with torch.no_grad():
        reference = conv(x).feats
        monkeypatch.setattr(conv_module, "_BLOCK_ELEMENTS", 4 * 27 * 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = conv(x).feats
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), reference, rtol=0.05, atol=0.05)
