"""Kernel offsets and kernel maps of the pure-PyTorch backend (built once per family, then cached).

Offset order is exactly torchsparse's (facts §3.4): odd kernels enumerate x fastest
(k = 9(dz+1) + 3(dy+1) + (dx+1) for size 3, centre 13); even kernels enumerate z fastest
(k = 4bx + 2by + bz for size 2). Offsets are multiplied by the tensor stride.

Maps (on the coordinates' device):

* :class:`SubmanifoldMap` (odd k, stride 1): neighbour table in "sorted space" -- position j is the
  voxel with the j-th smallest packed key (lexicographic (batch, x, y, z)), original row ``order[j]``.
  ``neighbours[k, j]`` = sorted position of the voxel at offset k, or N (a zero row appended to the
  features) where there is none. Built with one searchsorted over half of the offsets; the other half
  follows by symmetry (neighbour relations are mutual). Convs run in sorted space because spatially
  coherent rows make the neighbour gathers cache friendly (voxels from an initial voxelisation come in
  hash order, i.e. spatially random).
* :class:`DownsampleMap` (k 2, stride 2): every input voxel p has exactly one parent
  q = floor(p / 2s) * 2s (FLOOR, also for negative coordinates) and tap k(p - q). Output voxels are
  the unique parents in lexicographic (batch, x, y, z) order, like torchsparse v1.4. The transposed
  conv uses the same map in reverse and outputs the down conv's input voxels in their order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import CoordinateError, KernelMapError
from .hashing import CoordinateIndex, CoordinatePacker
from .tensor import KernelMapCache


def kernel_offsets(kernel_size: int, stride: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """(k^3, 3) int32 offsets in torchsparse order (odd: x fastest; even: z fastest), times ``stride``."""
    lo = -kernel_size // 2 + 1  # Python floor division, as torchsparse: k=3 -> -1..1, k=2 -> 0..1
    axis = torch.arange(lo, lo + kernel_size, dtype=torch.int32, device=device) * stride
    a, b, c = torch.meshgrid(axis, axis, axis, indexing="ij")  # c varies fastest
    if kernel_size % 2 == 1:
        grid = torch.stack([c, b, a], dim=-1)  # (x, y, z) with x fastest
    else:
        grid = torch.stack([a, b, c], dim=-1)  # (x, y, z) with z fastest
    return grid.reshape(-1, 3)


@dataclass
class SubmanifoldMap:
    """Neighbour table of a stride-1 conv with an odd kernel on one coordinate set (sorted space)."""

    neighbours: torch.Tensor  # (K, N) int32 sorted positions of the neighbours, N (the zero row) if none
    pair_counts: list[int]  # neighbour pairs per offset (the centre has N)
    order: torch.Tensor | None  # (N,) int64 original row of each sorted position; None = identity
    inverse: torch.Tensor | None  # (N,) int64 sorted position of each original row; None = identity

    @property
    def num_voxels(self) -> int:
        return int(self.neighbours.shape[1])

    def to_sorted(self, feats: torch.Tensor) -> torch.Tensor:
        return feats if self.order is None else feats.index_select(0, self.order)

    def from_sorted(self, feats: torch.Tensor) -> torch.Tensor:
        return feats if self.inverse is None else feats.index_select(0, self.inverse)

    def rows(self, taps: torch.Tensor, base_rows: torch.Tensor) -> torch.Tensor:
        """(len(base_rows), len(taps)) int64 original rows of the neighbours of original rows
        ``base_rows`` at kernel offsets ``taps``; -1 where there is none."""
        base = base_rows if self.inverse is None else self.inverse[base_rows]
        found = self.neighbours[taps[:, None], base[None, :]].t().long()
        n = self.num_voxels
        if self.order is not None:
            found = torch.cat([self.order, self.order.new_tensor([n])])[found]
        return torch.where(found == n, -1, found)


@dataclass
class DownsampleMap:
    """Parent of every input voxel for a kernel-2 stride-2 conv (and its transposed counterpart)."""

    parent: torch.Tensor  # (N_in,) int64 output row of each input voxel
    tap: torch.Tensor  # (N_in,) int64 kernel index k(p - parent)
    children: torch.Tensor  # (8, N_out) int32 input row per (tap, output), N_in where missing
    out_coords: torch.Tensor  # (N_out, 4) int32, lexicographic (batch, x, y, z)


def coordinate_index(
    cache: KernelMapCache, stride: int, coords: torch.Tensor, margin: int
) -> CoordinateIndex:
    """The cached sorted-key index of ``stride``'s coordinate set, rebuilt if its margin is too small."""
    index = cache.indices.get(stride)
    if index is None or index.margin < margin:
        index = CoordinateIndex(coords, margin)
        cache.indices[stride] = index
    return index


def submanifold_map(
    cache: KernelMapCache, coords: torch.Tensor, stride: int, kernel_size: int
) -> SubmanifoldMap:
    """The family's map for an odd-kernel stride-1 conv at ``stride`` (built on first use)."""
    key = ("submanifold", stride, kernel_size)
    kmap = cache.maps.get(key)
    if kmap is None:
        kmap = build_submanifold_map(coords, stride, kernel_size, cache)
        cache.maps[key] = kmap
        cache.builds += 1
    return kmap


def cached_submanifold_map(cache: KernelMapCache, stride: int, kernel_size: int) -> SubmanifoldMap | None:
    return cache.maps.get(("submanifold", stride, kernel_size))


def downsample_map(cache: KernelMapCache, coords: torch.Tensor, stride: int) -> DownsampleMap:
    """The family's map for a kernel-2 stride-2 conv from ``stride`` (built on first use)."""
    key = ("down", stride, 2)
    kmap = cache.maps.get(key)
    if kmap is None:
        kmap = build_downsample_map(coords, stride)
        cache.maps[key] = kmap
        cache.builds += 1
    return kmap


def cached_downsample_map(cache: KernelMapCache, stride: int) -> DownsampleMap | None:
    return cache.maps.get(("down", stride, 2))


def check_on_lattice(coords: torch.Tensor, stride: int) -> None:
    if stride > 1 and bool((coords[:, :3] % stride != 0).any()):
        raise CoordinateError(f"voxel coordinates of a stride-{stride} tensor must be multiples of {stride}")


def build_submanifold_map(
    coords: torch.Tensor, stride: int, kernel_size: int, cache: KernelMapCache
) -> SubmanifoldMap:
    """Neighbour table for an odd ``kernel_size`` stride-1 conv at tensor stride ``stride``."""
    if kernel_size % 2 != 1:
        raise KernelMapError(f"a submanifold (stride-1) map needs an odd kernel size, got {kernel_size}")
    check_on_lattice(coords, stride)
    index = coordinate_index(cache, stride, coords, (kernel_size // 2) * stride)
    n = index.size
    device = coords.device
    offsets = kernel_offsets(kernel_size, stride, device)
    volume = offsets.shape[0]
    centre = volume // 2
    if n == 0:
        return SubmanifoldMap(
            torch.zeros((volume, 0), dtype=torch.int32, device=device), [0] * volume, None, None
        )
    # Work in "sorted space" (column j = the voxel with the j-th smallest key): the queries of one
    # offset are then ascending too, which keeps the binary searches cache friendly.
    queries = index.sorted_keys[None, :] + index.packer.offset_delta(offsets[:centre])[:, None]
    pos = torch.searchsorted(index.sorted_keys, queries, out_int32=True).clamp_(max=n - 1)
    found = index.sorted_keys[pos] == queries
    del queries
    table = torch.empty((volume, n), dtype=torch.int32, device=device)
    table[:centre] = torch.where(found, pos, n)
    table[centre] = torch.arange(n, dtype=torch.int32, device=device)
    # Offsets k and volume-1-k are opposite: if j sees i at +d, then i sees j at -d.
    k_idx, j_idx = torch.nonzero(found, as_tuple=True)
    mirrored = torch.full((centre, n), n, dtype=torch.int32, device=device)
    mirrored[k_idx, pos[k_idx, j_idx].long()] = j_idx.to(torch.int32)
    table[centre + 1 :] = mirrored.flip(0)
    counts = found.sum(dim=1).tolist()
    identity = torch.arange(n, device=device)
    if torch.equal(index.order, identity):  # already in sorted order (e.g. down-sampled voxels)
        return SubmanifoldMap(table, [*counts, n, *counts[::-1]], None, None)
    inverse = torch.empty(n, dtype=torch.int64, device=device)
    inverse[index.order] = identity
    return SubmanifoldMap(table, [*counts, n, *counts[::-1]], index.order, inverse)


def build_downsample_map(coords: torch.Tensor, stride: int) -> DownsampleMap:
    """Parent table of a kernel-2 stride-2 conv on voxels at tensor stride ``stride``."""
    check_on_lattice(coords, stride)
    n_in = coords.shape[0]
    step = 2 * stride
    parent_xyz = torch.div(coords[:, :3], step, rounding_mode="floor") * step
    parents = torch.cat([parent_xyz, coords[:, 3:]], dim=1)
    packer = CoordinatePacker.around(parents)
    unique_keys, parent = torch.unique(packer.pack(parents), sorted=True, return_inverse=True)
    bits = torch.div(coords[:, :3] - parent_xyz, stride, rounding_mode="floor").to(torch.int64)
    tap = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]
    n_out = unique_keys.shape[0]
    children = torch.full((8 * n_out,), n_in, dtype=torch.int32, device=coords.device)
    children[tap * n_out + parent] = torch.arange(n_in, dtype=torch.int32, device=coords.device)
    return DownsampleMap(parent, tap, children.view(8, n_out), packer.unpack(unique_keys))
