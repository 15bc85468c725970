"""GRU fusion of per-fragment features into per-level global hidden states, and the global TSDF.

Both keep a sparse global store per level (integer voxel indices relative to the world origin plus
values) and update it by direct substitution inside the current fragment volume (facts §1.6, §2.6):
stored entries inside the volume are dropped and replaced by the updated set, entries outside stay.

Reset-gate quirk (facts §2.6): upstream passes one point tensor to the update- and reset-gate convs.
Voxelising rescales that tensor's coordinates in place, so the reset gate voxelises coordinates
divided by the voxel size twice and then devoxelises with the update gate's cached corner indices and
weights (rows of a differently ordered voxel list). The released weights were trained with that
behaviour, so it is reproduced by default (the sparse backend keeps upstream's caching semantics);
``reset_gate_quirk=False`` gives the reset gate its own point tensor (a textbook ConvGRU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .projection import N_VOX, VOXEL_SIZE, affine_f32, voxel_positions_f32
from .sparse import PointTensor, SparseConv3d, SparseTensor, initial_voxelize, point_to_voxel, voxel_to_point

CHANNELS = (96, 48, 24)


class SConv3d(nn.Module):
    """Point conv: voxelise (mean) at ``voxel_size``, one k3 sparse conv, trilinear back, + Linear."""

    def __init__(self, in_ch: int, out_ch: int, voxel_size: float) -> None:
        super().__init__()
        self.net = SparseConv3d(in_ch, out_ch, 3)
        self.point_transforms = nn.Sequential(nn.Linear(in_ch, out_ch))
        self.voxel_size = voxel_size

    def forward(self, z: PointTensor) -> torch.Tensor:
        """Upstream's SConv3d on point tensor ``z`` (whose coordinates it rescales in place)."""
        return self.on_voxels(initial_voxelize(z, self.voxel_size), z)

    def on_voxels(self, voxels: SparseTensor, z: PointTensor) -> torch.Tensor:
        """The same with ``z`` already voxelised into ``voxels`` (``z.coords`` in voxel units)."""
        return voxel_to_point(self.net(voxels), z) + self.point_transforms(z.feats)


class ConvGRU(nn.Module):
    """h' = (1 - z) h + z q with z = sigmoid(Gz[h, x]), r = sigmoid(Gr[h, x]), q = tanh(Gq[r h, x])."""

    def __init__(self, channels: int, voxel_size: float, reset_gate_quirk: bool = True) -> None:
        super().__init__()
        self.convz = SConv3d(2 * channels, channels, voxel_size)
        self.convr = SConv3d(2 * channels, channels, voxel_size)
        self.convq = SConv3d(2 * channels, channels, voxel_size)
        self.voxel_size = voxel_size
        self.reset_gate_quirk = reset_gate_quirk

    def forward(self, h: torch.Tensor, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``h``, ``x`` (P, C); ``points`` (P, 4) float (x, y, z, batch) in metres -> new hidden (P, C).

        Gz, Gq (and the clean Gr) voxelise the same points, so they share one voxelisation, kernel map
        and set of trilinear weights; the result is the same as voxelising each gate's input anew.
        """
        hx = PointTensor(torch.cat([h, x], dim=1), points)
        voxels = initial_voxelize(hx, self.voxel_size)  # hx.coords now in voxel units
        scaled, devox = hx.coords, hx.devox_cache
        z = torch.sigmoid(self.convz.on_voxels(voxels, hx))
        if self.reset_gate_quirk:
            # upstream hands hx (already rescaled, with Gz's trilinear cache) to Gr, which rescales again
            r = torch.sigmoid(self.convr(hx))
        else:
            r = torch.sigmoid(self.convr.on_voxels(voxels, hx))
        rhx = PointTensor(torch.cat([r * h, x], dim=1), scaled, devox_cache=devox)
        q = torch.tanh(self.convq.on_voxels(point_to_voxel(voxels, rhx), rhx))
        return (1 - z) * h + z * q


def _grid_keys(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Row-major keys of local grid coordinates (N, 3) in [0, dim): ascending key = x-major order."""
    return (coords[:, 0] * dim + coords[:, 1]) * dim + coords[:, 2]


def _grid_coords(keys: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.stack([keys // (dim * dim), (keys // dim) % dim, keys % dim], dim=1)


def _scatter_rows(keys: torch.Tensor, target_keys: torch.Tensor, values: torch.Tensor,
                  fill: float) -> torch.Tensor:
    """Rows of ``values`` (keyed by ``keys``) placed at the positions of sorted ``target_keys``;
    rows of ``target_keys`` without a value get ``fill``."""
    out = values.new_full((len(target_keys), *values.shape[1:]), fill)
    if len(keys) and len(target_keys):
        pos = torch.searchsorted(target_keys, keys).clamp(max=len(target_keys) - 1)
        hit = target_keys[pos] == keys
        out[pos[hit]] = values[hit]
    return out


@dataclass
class SparseStore:
    """A global sparse volume: int64 (M, 3) voxel indices (relative to the world origin) and values."""

    coords: torch.Tensor
    values: torch.Tensor

    def split(self, origin: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(local coords of the entries inside the volume [origin, origin + dim), inside mask)."""
        local = self.coords - origin
        inside = ((local >= 0) & (local < dim)).all(dim=1)
        return local[inside], inside

    def substitute(self, inside: torch.Tensor, coords: torch.Tensor, values: torch.Tensor) -> None:
        """Drop the entries inside the volume, append the new set (upstream storage order)."""
        outside = ~inside
        self.coords = torch.cat([self.coords[outside], coords])
        self.values = torch.cat([self.values[outside], values])


@dataclass
class FusedLevel:
    coords: torch.Tensor  # (U, 3) int64 local level-grid coordinates of the fused set, x-major order
    feats: torch.Tensor  # (U, C) new hidden state = features for the heads
    points: torch.Tensor  # (U, 3) float32 aligned-frame points fed to the ConvGRU


class GRUFusion(nn.Module):
    """One ConvGRU per level plus the global hidden state of each level (not part of the state dict)."""

    def __init__(self, reset_gate_quirk: bool = True) -> None:
        super().__init__()
        self.fusion_nets = nn.ModuleList(
            ConvGRU(ch, VOXEL_SIZE * 2 ** (len(CHANNELS) - 1 - i), reset_gate_quirk) for i, ch in enumerate(CHANNELS)
        )
        self.hidden: list[SparseStore | None] = [None] * len(CHANNELS)

    def reset_state(self) -> None:
        self.hidden = [None] * len(CHANNELS)

    def forward(self, level: int, coords: torch.Tensor, feats: torch.Tensor, vol_origin_voxels: torch.Tensor,
                vol_origin_partial: torch.Tensor, world_to_aligned_camera: torch.Tensor) -> FusedLevel:
        """Fuse current features (``coords`` (N, 3) local level-grid indices) with the stored hidden state.

        The voxel set updated (FULL fusion) is the union of current voxels and stored voxels inside the
        fragment volume, each kept only if its feature row is non-zero (upstream's dense-grid test).
        """
        interval = 2 ** (len(CHANNELS) - 1 - level)
        dim = N_VOX[0] // interval
        origin = vol_origin_voxels // interval  # exact: volume origins are multiples of 8 finest voxels
        store = self.hidden[level]
        if store is None:
            store = self.hidden[level] = SparseStore(coords.new_zeros((0, 3)), feats.new_zeros((0, feats.shape[1])))
        old_local, inside = store.split(origin, dim)
        old_feats = store.values[inside]
        cur_keys, old_keys = _grid_keys(coords, dim), _grid_keys(old_local, dim)
        union = torch.unique(torch.cat([cur_keys[(feats != 0).any(dim=1)], old_keys[(old_feats != 0).any(dim=1)]]))
        x = _scatter_rows(cur_keys, union, feats, 0.0)
        h = _scatter_rows(old_keys, union, old_feats, 0.0)
        union_coords = _grid_coords(union, dim)

        world = voxel_positions_f32(union_coords, VOXEL_SIZE * interval, vol_origin_partial)
        points = affine_f32(world_to_aligned_camera[:3], world)
        point_coords = torch.cat([points, points.new_zeros((len(points), 1))], dim=1)
        h_new = self.fusion_nets[level](h, x, point_coords)
        store.substitute(inside, union_coords + origin, h_new.detach())
        return FusedLevel(union_coords, h_new, points)


class TSDFSubstitution(nn.Module):
    """The global finest-level TSDF, updated by direct substitution (upstream ``fuse_to_global``, FULL).

    Inside the fragment volume the new voxel set is every voxel where the stored or the predicted TSDF
    has magnitude < 1, valued with the prediction (1.0 where nothing was predicted). No parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.volume: SparseStore | None = None

    def reset_state(self) -> None:
        self.volume = None

    def forward(self, coords: torch.Tensor, tsdf: torch.Tensor,
                vol_origin_voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Substitute the prediction (``coords`` (N, 3) local finest indices, ``tsdf`` (N,)).

        Returns the new set inside the volume: global voxel indices (K, 3) int64 and TSDF values (K,).
        """
        dim = N_VOX[0]
        if self.volume is None:
            self.volume = SparseStore(coords.new_zeros((0, 3)), tsdf.new_zeros((0,)))
        old_local, inside = self.volume.split(vol_origin_voxels, dim)
        old_tsdf = self.volume.values[inside]
        cur_keys = _grid_keys(coords, dim)
        union = torch.unique(torch.cat([cur_keys[tsdf.abs() < 1], _grid_keys(old_local, dim)[old_tsdf.abs() < 1]]))
        values = _scatter_rows(cur_keys, union, tsdf, 1.0)
        new_coords = _grid_coords(union, dim) + vol_origin_voxels
        self.volume.substitute(inside, new_coords, values)
        return new_coords, values
