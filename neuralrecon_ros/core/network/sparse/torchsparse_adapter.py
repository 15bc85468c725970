"""Route the sparse ops through torchsparse v1.4 (used when ``set_backend('torchsparse')``).

The modules keep their own parameters (the same ``kernel`` tensors are passed to torchsparse); each
tensor family keeps torchsparse's ``cmaps``/``kmaps`` dicts in ``KernelMapCache.backend_state`` so
torchsparse builds its kernel maps once per family, exactly as it does natively. The point<->voxel ops
follow NeuralRecon's torchsparse utilities, with the caches of :class:`~.tensor.PointTensor`.

Only imported when torchsparse is importable (see :func:`.backend.torchsparse_available`).
"""

from __future__ import annotations

from typing import Any

import torch
import torchsparse
import torchsparse.nn.functional as ts_functional
from torchsparse.nn.utils import get_kernel_offsets

from .conv import conv_kind
from .errors import KernelMapError
from .tensor import KernelMapCache, PointTensor, SparseTensor


def _family_state(cache: KernelMapCache) -> dict[str, dict[Any, Any]]:
    return cache.backend_state.setdefault("torchsparse", {"cmaps": {}, "kmaps": {}})


def to_torchsparse(x: SparseTensor) -> torchsparse.SparseTensor:
    """A torchsparse tensor sharing ``x``'s features, coordinates and family maps."""
    state = _family_state(x.cache)
    out = torchsparse.SparseTensor(x.feats, x.coords, x.stride)
    out.cmaps = state["cmaps"]
    out.kmaps = state["kmaps"]
    out.cmaps.setdefault(out.stride, x.coords)
    return out


def conv3d(
    x: SparseTensor, kernel: torch.Tensor, kernel_size: int, stride: int, transposed: bool
) -> SparseTensor:
    conv_kind(kernel_size, stride, transposed)  # same supported set as the torch backend
    try:
        out = ts_functional.conv3d(
            to_torchsparse(x),
            kernel.to(x.feats.dtype),
            kernel_size=kernel_size,
            stride=stride,
            transposed=transposed,
        )
    except KeyError as missing:  # torchsparse looks the down conv's map up by key
        raise KernelMapError(
            f"transposed conv on a stride-{x.stride} tensor needs the kernel map of the matching down conv "
            f"run through torchsparse in the same family (missing {missing})"
        ) from None
    # Take the coordinates from cmaps: torchsparse 1.4 returns the INPUT coords when a down conv reuses
    # a cached kernel map, but cmaps always holds the coordinate set of each stride.
    out_stride = out.stride[0]
    return SparseTensor(out.feats, out.cmaps[out.stride], out_stride, x.cache)


def _floor_cells(z: PointTensor, stride: int) -> torch.Tensor:
    return torch.cat(
        [torch.floor(z.coords[:, :3] / stride).int() * stride, z.coords[:, -1].int().view(-1, 1)], dim=1
    )


def initial_voxelize(z: PointTensor, voxel_size: float, point_size: float) -> SparseTensor:
    scaled = torch.cat([(z.coords[:, :3] * point_size) / voxel_size, z.coords[:, -1].view(-1, 1)], dim=1)
    point_hash = ts_functional.sphash(torch.floor(scaled).int())
    voxel_hash = torch.unique(point_hash)
    voxel_of_point = ts_functional.sphashquery(point_hash, voxel_hash)
    counts = ts_functional.spcount(voxel_of_point.int(), len(voxel_hash))
    coords = torch.round(ts_functional.spvoxelize(torch.floor(scaled), voxel_of_point, counts)).int()
    feats = ts_functional.spvoxelize(z.feats, voxel_of_point, counts)
    z.coords = scaled
    return SparseTensor(feats, coords, 1)


def point_to_voxel(x: SparseTensor, z: PointTensor) -> SparseTensor:
    cached = z.vox_cache.get(x.stride)
    if cached is None:
        point_hash = ts_functional.sphash(_floor_cells(z, x.stride))
        voxel_of_point = ts_functional.sphashquery(point_hash, ts_functional.sphash(x.coords))
        counts = ts_functional.spcount(voxel_of_point.int(), x.num_voxels)
        cached = (voxel_of_point, counts)
        z.vox_cache[x.stride] = cached
    voxel_of_point, counts = cached
    return x.replace_feats(ts_functional.spvoxelize(z.feats, voxel_of_point, counts.int()))


def voxel_to_point(x: SparseTensor, z: PointTensor, nearest: bool) -> torch.Tensor:
    cached = z.devox_cache.get(x.stride)
    if cached is None:
        offsets = get_kernel_offsets(2, x.stride, 1, device=z.feats.device)
        corner_hash = ts_functional.sphash(_floor_cells(z, x.stride), offsets)
        corners = ts_functional.sphashquery(corner_hash, ts_functional.sphash(x.coords))
        weights = (
            ts_functional.calc_ti_weights(z.coords, corners, scale=x.stride).transpose(0, 1).contiguous()
        )
        corners = corners.transpose(0, 1).contiguous()
        if nearest:
            weights[:, 1:] = 0.0
            corners[:, 1:] = -1
        cached = (corners, weights)
        z.devox_cache[x.stride] = cached
    corners, weights = cached
    return ts_functional.spdevoxelize(x.feats, corners, weights)
