"""The coarse-to-fine sparse network: back-projection, SPVCNN, GRU fusion, heads, pruning (facts §2.4)."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..timing import StageTimer
from .backproject import BackProjection, back_project
from .gru_fusion import CHANNELS, FusedLevel, GRUFusion
from .projection import N_LEVELS, N_VOX, VOXEL_SIZE, FragmentGeometry, affine_f32, voxel_positions_f32
from .sparse import PointTensor
from .spvcnn import SPVCNN

log = logging.getLogger("neuralrecon_ros")

#: back-projected feature widths per level (coarse first): backbone channels + normalised depth
BACKPROJECTED = (80 + 1, 40 + 1, 24 + 1)
#: occupancy logit thresholds (upstream THRESHOLDS; a voxel survives when its logit is strictly greater)
THRESHOLDS = (0.0, 0.0, 0.0)
# child offsets of a voxel split, upstream order: none, +x, +y, +z, +xy, +xz, +yz, +xyz
_CHILD_OFFSETS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))


def stage(timer: StageTimer | None, name: str) -> AbstractContextManager[Any]:
    """A timing context for ``name`` when a timer is given (no-op otherwise)."""
    return timer.stage(name) if timer is not None else nullcontext()


def dense_grid(interval: int, device: torch.device) -> torch.Tensor:
    """All coarse voxels of the fragment volume, (n^3, 3) int64 finest units, x slowest and z fastest."""
    axis = torch.arange(0, N_VOX[0], interval, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1).t()


def split_voxels(coords: torch.Tensor, feats: torch.Tensor, interval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each voxel's 8 children (spacing ``interval``) in upstream order, each inheriting the parent's row."""
    offsets = torch.tensor(_CHILD_OFFSETS, dtype=coords.dtype, device=coords.device) * interval
    children = (coords[:, None, :] + offsets[None]).reshape(-1, 3)
    return children, feats.repeat_interleave(len(_CHILD_OFFSETS), dim=0)


@dataclass
class Prediction:
    coords: torch.Tensor  # (N, 3) int64 local finest-voxel coordinates of the surviving finest voxels
    tsdf: torch.Tensor  # (N,) raw TSDF head output


class NeuConNet(nn.Module):
    """Three levels (0.16, 0.08, 0.04 m) of back-project -> SPVCNN -> GRU fusion -> heads -> prune."""

    def __init__(self, reset_gate_quirk: bool = True) -> None:
        super().__init__()
        self.gru_fusion = GRUFusion(reset_gate_quirk)
        in_channels = [BACKPROJECTED[0]] + [BACKPROJECTED[i] + CHANNELS[i - 1] + 2 for i in range(1, N_LEVELS)]
        self.sp_convs = nn.ModuleList(
            SPVCNN(in_channels[i], i, VOXEL_SIZE * 2 ** (N_LEVELS - 1 - i)) for i in range(N_LEVELS)
        )
        self.tsdf_preds = nn.ModuleList(nn.Linear(ch, 1) for ch in CHANNELS)
        self.occ_preds = nn.ModuleList(nn.Linear(ch, 1) for ch in CHANNELS)

    def candidates(self, level: int, coords: torch.Tensor | None, feats: torch.Tensor | None,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The voxels ``level`` evaluates (finest units): the dense coarse grid at level 0, else the 8
        children of the previous level's survivors with their parents' feature rows."""
        interval = 2 ** (N_LEVELS - 1 - level)
        if level == 0:
            return dense_grid(interval, device), None
        return split_voxels(coords, feats, interval)

    def sparse_level(self, level: int, coords: torch.Tensor, feats: torch.Tensor | None,
                     features: list[torch.Tensor], geometry: FragmentGeometry, timer: StageTimer | None = None,
                     ) -> tuple[BackProjection, torch.Tensor, torch.Tensor]:
        """Back-project the 2D features onto ``coords`` and run the level's SPVCNN.

        Returns the back-projection, the voxels' positions in the aligned camera frame (N, 3) and the
        SPVCNN output features (N, CHANNELS[level])."""
        scale = N_LEVELS - 1 - level
        with stage(timer, "backproject"):
            projected = back_project(coords, geometry.vol_origin_partial, VOXEL_SIZE, features[scale],
                                     geometry.proj_matrices[:, scale])
        inputs = projected.features if feats is None else torch.cat([projected.features, feats], dim=1)
        with stage(timer, f"sparse3d_level{level}"):
            world = voxel_positions_f32(coords, VOXEL_SIZE, geometry.vol_origin_partial)
            points = affine_f32(geometry.world_to_aligned_camera[:3], world)
            point_coords = torch.cat([points, points.new_zeros((len(points), 1))], dim=1)
            out = self.sp_convs[level](PointTensor(inputs, point_coords))
        return projected, points, out

    def fuse(self, level: int, coords: torch.Tensor, feats: torch.Tensor, geometry: FragmentGeometry,
             ) -> FusedLevel:
        """GRU fusion of the level's features with the global hidden state; coordinates in finest units."""
        interval = 2 ** (N_LEVELS - 1 - level)
        fused = self.gru_fusion(level, coords // interval, feats, geometry.vol_origin_voxels,
                                geometry.vol_origin_partial, geometry.world_to_aligned_camera)
        return dataclasses.replace(fused, coords=fused.coords * interval)

    def heads(self, level: int, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TSDF and occupancy logit (N,) of each voxel."""
        return self.tsdf_preds[level](feats)[:, 0], self.occ_preds[level](feats)[:, 0]

    def forward(self, features: list[torch.Tensor], geometry: FragmentGeometry,
                trace: dict[str, Any] | None = None, timer: StageTimer | None = None) -> Prediction | None:
        """``features[s]`` (V, C_s, H_s, W_s) at stride 4 * 2**s. None when a level keeps no voxel
        (upstream then leaves the global TSDF untouched; GRU states of the levels run are updated)."""
        device = features[0].device
        coords = feats = None
        for level in range(N_LEVELS):
            coords, feats = self.candidates(level, coords, feats, device)
            projected, points, feats = self.sparse_level(level, coords, feats, features, geometry, timer)
            with stage(timer, f"gru_level{level}"):
                fused = self.fuse(level, coords, feats, geometry)
            feats = fused.feats
            tsdf, occ = self.heads(level, feats)
            keep = occ > THRESHOLDS[level]
            if trace is not None:
                trace[f"level{level}"] = {
                    "candidate_coords": coords,  # (N, 3) finest units, fed to back-projection and SPVCNN
                    "backproject_valid": projected.valid,  # (V, N)
                    "spvcnn_points": points,  # (N, 3) float32 aligned frame
                    "fused_coords": fused.coords,  # (U, 3) finest units, after GRU fusion (heads run here)
                    "gru_points": fused.points,  # (U, 3)
                    "tsdf": tsdf.detach(),  # (U,)
                    "occ": occ.detach(),  # (U,)
                    "survivors": keep,  # (U,) bool
                }
            coords = fused.coords[keep]
            feats = torch.cat([feats[keep], tsdf[keep, None], occ[keep, None]], dim=1)
            if len(coords) == 0:
                # upstream's "no valid points" case: usually poses that are not metric, or a floor far from z = 0
                log.warning("NeuralRecon: no voxel of level %d was predicted occupied; the fragment changes "
                            "nothing (check pose scale and the floor height of the world frame)", level)
                return None
        return Prediction(coords, tsdf[keep])
