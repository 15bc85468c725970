"""Point <-> voxel operations of the SPVCNN point branch (semantics of NeuralRecon's torchsparse utils).

* :func:`initial_voxelize`: scale the points into voxel units, floor, unique voxels ordered by
  ascending torchsparse hash (as torchsparse), voxel feature = mean of its points' features.
* :func:`point_to_voxel`: mean of the points' features into the existing voxels of a tensor
  (voxel floor(p / s) * s at stride s; voxels without points get 0; points without a voxel are dropped).
* :func:`voxel_to_point`: trilinear devoxelisation (facts §2.5): corners base + {0, s}^3 in kernel-2
  order, weights of missing corners set to 0 and the rest renormalised (sum + 1e-8).

Arithmetic follows torchsparse's float32 recipes (same operation order) so round-off matches.
"""

from __future__ import annotations

import torch

from . import backend
from .errors import CoordinateError
from .hashing import CoordinatePacker, torchsparse_hash
from .kernel_map import cached_submanifold_map, coordinate_index, kernel_offsets
from .tensor import PointTensor, SparseTensor

_COORD_LIMIT = 2**30  # floor(point) must fit int32 comfortably (kernel offsets are added later)


def _floor_to_int(coords: torch.Tensor, stride: int) -> torch.Tensor:
    """int32 (P, 4): (floor(p / stride) * stride, batch) of float (x, y, z, batch) points."""
    xyz = coords[:, :3] / stride if stride != 1 else coords[:, :3]
    floored = torch.floor(xyz)
    if not bool(torch.isfinite(floored).all()) or bool((floored.abs() > _COORD_LIMIT).any()):
        raise CoordinateError("point coordinates must be finite and within +-2**30 voxels")
    xyz_int = floored.to(torch.int32) * stride
    return torch.cat([xyz_int, coords[:, 3:].to(torch.int32)], dim=1)


def _scatter_mean(feats: torch.Tensor, index: torch.Tensor, counts: torch.Tensor, size: int) -> torch.Tensor:
    """out[v] = sum over points i with index[i] == v of feats[i] / counts[v] (torchsparse order);
    points with index -1 are skipped."""
    out = feats.new_zeros((size, feats.shape[1]))
    valid = index >= 0
    if not bool(valid.all()):
        feats, index = feats[valid], index[valid]
    out.index_add_(0, index, feats / counts[index].to(feats.dtype)[:, None])
    return out


def initial_voxelize(z: PointTensor, voxel_size: float = 1.0, point_size: float = 1.0) -> SparseTensor:
    """Voxelise points: coords (p * point_size) / voxel_size, floor, unique, mean features.

    Returns a stride-1 :class:`SparseTensor` (new kernel-map cache) whose voxels are ordered by
    ascending :func:`~.hashing.torchsparse_hash` of their (x, y, z, batch) -- torchsparse's order.
    As upstream, ``z.coords`` is REPLACED by the scaled coordinates, so later point<->voxel ops on ``z``
    (and its derived tensors) work in the voxel units of the result; calling this twice on the same
    point tensor scales twice (NeuralRecon's GRU reset-gate quirk relies on it). Nothing is cached.
    """
    if backend.get_backend() == "torchsparse":
        from . import torchsparse_adapter

        return torchsparse_adapter.initial_voxelize(z, voxel_size, point_size)
    scaled = torch.cat([(z.coords[:, :3] * point_size) / voxel_size, z.coords[:, 3:]], dim=1)
    cells = _floor_to_int(scaled, 1)
    packer = CoordinatePacker.around(cells)
    unique_keys, inverse = torch.unique(packer.pack(cells), sorted=True, return_inverse=True)
    unique_cells = packer.unpack(unique_keys)
    # Stable sort: equal hashes (collisions, never seen in practice) keep coordinate order.
    order = torch.argsort(torchsparse_hash(unique_cells), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=order.device)
    voxel_of_point = rank[inverse]
    n = order.shape[0]
    counts = torch.bincount(voxel_of_point, minlength=n)
    feats = _scatter_mean(z.feats, voxel_of_point, counts, n)
    z.coords = scaled
    return SparseTensor(feats, unique_cells[order], 1)


def point_to_voxel(x: SparseTensor, z: PointTensor) -> SparseTensor:
    """Mean of ``z``'s features into ``x``'s voxels (0 where no point falls); same voxels/cache as ``x``.

    The point->voxel assignment is cached in ``z.vox_cache[x.stride]`` and reused (keyed by stride only).
    """
    if backend.get_backend() == "torchsparse":
        from . import torchsparse_adapter

        return torchsparse_adapter.point_to_voxel(x, z)
    cached = z.vox_cache.get(x.stride)
    if cached is None:
        index = coordinate_index(x.cache, x.stride, x.coords, 0)
        voxel_of_point = index.find(_floor_to_int(z.coords, x.stride))
        counts = torch.bincount(voxel_of_point[voxel_of_point >= 0], minlength=x.num_voxels)
        cached = (voxel_of_point, counts)
        z.vox_cache[x.stride] = cached
    voxel_of_point, counts = cached
    return x.replace_feats(_scatter_mean(z.feats, voxel_of_point, counts, x.num_voxels))


def trilinear_weights(coords: torch.Tensor, corners: torch.Tensor, stride: int) -> torch.Tensor:
    """(P, 8) trilinear weights of float (P, 4) points w.r.t. the corners floor(p / s) * s + {0, s}^3
    (kernel-2 order), zeroed where ``corners`` (P, 8) is -1 and renormalised (sum + 1e-8).
    Same float operations and order as torchsparse's ``calc_ti_weights``."""
    p = coords
    pf = torch.floor(p / stride) * stride if stride != 1 else torch.floor(p)
    pc = pf + stride
    x, y, z = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    xf, yf, zf = pf[:, 0:1], pf[:, 1:2], pf[:, 2:3]
    xc, yc, zc = pc[:, 0:1], pc[:, 1:2], pc[:, 2:3]
    w = torch.cat(
        [
            (xc - x) * (yc - y) * (zc - z),
            (xc - x) * (yc - y) * (z - zf),
            (xc - x) * (y - yf) * (zc - z),
            (xc - x) * (y - yf) * (z - zf),
            (x - xf) * (yc - y) * (zc - z),
            (x - xf) * (yc - y) * (z - zf),
            (x - xf) * (y - yf) * (zc - z),
            (x - xf) * (y - yf) * (z - zf),
        ],
        dim=1,
    )
    w = w.t().contiguous()  # (8, P): the sum below then runs over the 8 corners in order
    if stride != 1:
        w /= stride**3
    w[corners.t() == -1] = 0
    w /= torch.sum(w, dim=0) + 1e-8
    return w.t().contiguous()


def devoxelize(feats: torch.Tensor, corners: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[p] = sum_k weights[p, k] * feats[corners[p, k]] (corners -1 contribute nothing), k in order."""
    padded = torch.cat([feats, feats.new_zeros((1, feats.shape[1]))], dim=0)
    rows = torch.where(corners >= 0, corners, torch.full_like(corners, feats.shape[0]))
    weights = weights.to(feats.dtype)
    out = weights[:, 0:1] * padded.index_select(0, rows[:, 0])
    for k in range(1, rows.shape[1]):
        out += weights[:, k : k + 1] * padded.index_select(0, rows[:, k])
    return out


# Rows of the kernel-3 offset table that hold the kernel-2 corner offsets b in {0, 1}^3 (kernel-2 order).
_CORNER_TAPS_IN_K3 = [13 + 9 * bz + 3 * by + bx for bx in (0, 1) for by in (0, 1) for bz in (0, 1)]


def _corner_rows(x: SparseTensor, coords: torch.Tensor) -> torch.Tensor:
    """(P, 8) int64 rows of ``x`` at the corners floor(p / s) * s + {0, s}^3 (kernel-2 order), -1 if absent.

    When the family already has ``x``'s kernel-3 map, only each point's base corner is searched and the
    other corners are read from the map; otherwise all 8 corners are searched.
    """
    s = x.stride
    base = _floor_to_int(coords, s)
    index = coordinate_index(x.cache, s, x.coords, 0)
    kmap = cached_submanifold_map(x.cache, s, 3)
    if kmap is None:
        queries = base[:, None, :].repeat(1, 8, 1)
        queries[:, :, :3] += kernel_offsets(2, s, base.device)[None]
        return index.find(queries.view(-1, 4)).view(-1, 8)
    base_row = index.find(base)
    hit = base_row >= 0
    taps = torch.tensor(_CORNER_TAPS_IN_K3, device=base.device)
    corners = torch.full((base.shape[0], 8), -1, dtype=torch.int64, device=base.device)
    corners[hit] = kmap.rows(taps, base_row[hit])
    if not bool(hit.all()):  # base voxel absent: search the other corners directly
        missing = base[~hit]
        queries = missing[:, None, :].repeat(1, 8, 1)
        queries[:, :, :3] += kernel_offsets(2, s, base.device)[None]
        corners[~hit] = index.find(queries.view(-1, 4)).view(-1, 8)
    return corners


def voxel_to_point(x: SparseTensor, z: PointTensor, nearest: bool = False) -> torch.Tensor:
    """Trilinear interpolation of ``x``'s features at ``z``'s points -> (P, C).

    Corner indices and weights are cached in ``z.devox_cache[x.stride]`` and reused whenever a point
    tensor sharing that cache meets a tensor of that stride (``nearest`` is then ignored, as upstream).
    ``nearest=True`` keeps only the base corner floor(p / s) * s, with its renormalised trilinear
    weight (not 1; upstream behaviour), or nothing if that corner is missing.
    """
    if backend.get_backend() == "torchsparse":
        from . import torchsparse_adapter

        return torchsparse_adapter.voxel_to_point(x, z, nearest)
    cached = z.devox_cache.get(x.stride)
    if cached is None:
        corners = _corner_rows(x, z.coords)
        weights = trilinear_weights(z.coords, corners, x.stride)
        if nearest:
            weights[:, 1:] = 0.0
            corners[:, 1:] = -1
        cached = (corners, weights)
        z.devox_cache[x.stride] = cached
    corners, weights = cached
    return devoxelize(x.feats, corners, weights)
