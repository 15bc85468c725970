"""Training targets: the full-scene TSDF of a recording and the per-level targets of a fragment volume.

Upstream's recipe (facts §1.5, §2.7): the scene is fused from its depth images at each network level's
voxel size (0.16 / 0.08 / 0.04 m) with a truncation of 3 voxels of that level (0.48 / 0.24 / 0.12 m),
depth beyond 3 m ignored. For a fragment, the targets are the dense level grids of its volume
(24^3 / 48^3 / 96^3, voxel ``(i, j, k)`` at ``origin + (i, j, k) * level voxel size``):

* TSDF: the scene TSDF at the voxel (normalised by the level's truncation, 1.0 where never observed);
* occupancy: ``|tsdf| < 0.999`` and the voxel observed, both in the scene TSDF and by the fragment's
  own keyframes (it lies in a keyframe's view, in front of the measured surface or within the
  truncation behind it: the voxels a depth fusion of the fragment alone would update).

The scene TSDF is fused with :class:`~..mapping.tsdf_map.TSDFMap` (the product's depth fusion). A
fragment may be augmented (the world rotated and shifted, :mod:`.augment`): its voxels are then
mapped back into the scene's world with ``T_scene_world`` and the scene TSDF is interpolated
trilinearly over its observed voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..mapping.config import MapConfig
from ..mapping.tsdf_map import TSDFMap
from ..network.projection import N_LEVELS, N_VOX, VOXEL_SIZE
from ..reconstructor import MapUpdate, Reconstructor
from ..types import CameraIntrinsics, Fragment, Frame

#: voxel size of each network level, coarse first (network order)
LEVEL_VOXEL_SIZES = tuple(VOXEL_SIZE * 2 ** (N_LEVELS - 1 - level) for level in range(N_LEVELS))
#: TSDF truncation in voxels of each level (upstream generate_gt: margin 3)
TRUNCATION_VOXELS = 3.0
#: |tsdf| below this counts as occupied (upstream)
OCCUPIED_BELOW = 0.999
#: upstream's ground-truth fusion ignores depth beyond 3 m
GT_MAX_DEPTH_M = 3.0
GT_MIN_DEPTH_M = 0.1


class TargetError(ValueError):
    """Ground truth cannot be built (a frame without depth, malformed arrays, bad level)."""


def level_interval(level: int) -> int:
    """Spacing of a level's voxels in finest voxels (4, 2, 1)."""
    if not 0 <= level < N_LEVELS:
        raise TargetError(f"level must be in 0..{N_LEVELS - 1}, got {level}")
    return 2 ** (N_LEVELS - 1 - level)


def level_dim(level: int) -> int:
    """Voxels per side of the fragment volume at ``level`` (24, 48, 96)."""
    return N_VOX[0] // level_interval(level)


def level_grid_coords(level: int) -> np.ndarray:
    """Local level-grid indices (n^3, 3) int64 of the fragment volume, x slowest and z fastest."""
    axis = np.arange(level_dim(level))
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def level_grid_points(vol_origin_voxels: np.ndarray, level: int) -> np.ndarray:
    """World positions (n^3, 3) float64 of the fragment volume's voxels at ``level``."""
    origin = np.asarray(vol_origin_voxels, dtype=np.float64).reshape(3) * VOXEL_SIZE
    return origin + level_grid_coords(level) * LEVEL_VOXEL_SIZES[level]


def depth_intrinsics(frame: Frame) -> tuple[np.ndarray, CameraIntrinsics]:
    """The frame's depth image and the intrinsics rescaled to its size (depth registered to colour)."""
    if frame.depth is None:
        raise TargetError(
            f"frame {frame.index} (t={frame.stamp:.6f}) has no depth image: ground truth "
            "needs depth with every frame (an RGB-D recording)"
        )
    depth = np.asarray(frame.depth, dtype=np.float32)
    if depth.ndim != 2:
        raise TargetError(f"frame {frame.index}: depth must be (H, W), got shape {depth.shape}")
    intrinsics = frame.intrinsics
    if (intrinsics.width, intrinsics.height) != (depth.shape[1], depth.shape[0]):
        intrinsics = intrinsics.scaled(depth.shape[1], depth.shape[0])
    return depth, intrinsics


class SceneTSDF:
    """The full-scene TSDF at every network level, fused from depth images by the product's TSDFMap."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        max_depth_m: float = GT_MAX_DEPTH_M,
        min_depth_m: float = GT_MIN_DEPTH_M,
    ) -> None:
        self.maps = [
            TSDFMap(
                MapConfig(voxel_size=size, block_size=8, truncation_distance_vox=TRUNCATION_VOXELS), device
            )
            for size in LEVEL_VOXEL_SIZES
        ]
        self.max_depth_m = max_depth_m
        self.min_depth_m = min_depth_m
        self.frames_integrated = 0

    def integrate(self, frame: Frame) -> MapUpdate:
        """Fuse one frame's depth into every level; returns the finest level's update."""
        depth, intrinsics = depth_intrinsics(frame)
        update = MapUpdate()
        for tsdf_map in self.maps:
            update = tsdf_map.integrate_depth(
                depth,
                intrinsics,
                frame.T_world_camera,
                max_depth_m=self.max_depth_m,
                min_depth_m=self.min_depth_m,
            )
        self.frames_integrated += 1
        return update

    def arrays(self, level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Observed voxels of ``level``: world voxel indices (M, 3) int64, TSDF (M,), weight (M,) float32."""
        return self.maps[level].voxels()  # type: ignore[return-value]

    @classmethod
    def from_arrays(
        cls, levels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], device: str | torch.device = "cpu"
    ) -> SceneTSDF:
        """Rebuild from :meth:`arrays` of every level (e.g. read from the training cache)."""
        if len(levels) != N_LEVELS:
            raise TargetError(f"expected {N_LEVELS} levels of scene TSDF, got {len(levels)}")
        scene = cls(device)
        for tsdf_map, (coords, tsdf, weight) in zip(scene.maps, levels):
            coords = np.asarray(coords, dtype=np.int64)
            if (
                coords.ndim != 2
                or coords.shape[1] != 3
                or len(tsdf) != len(coords)
                or len(weight) != len(coords)
            ):
                raise TargetError(
                    f"scene TSDF arrays disagree: coords {coords.shape}, tsdf {np.shape(tsdf)}, "
                    f"weight {np.shape(weight)}"
                )
            tsdf_map.set_voxels(coords, np.asarray(tsdf, np.float32), np.asarray(weight, np.float32))
        return scene

    def sample(self, level: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Trilinear TSDF (N,) at world ``points`` (N, 3) over observed voxels, and 'observed' (N,) bool.

        Unobserved corners are left out of the interpolation; a point with no observed corner gets
        1.0 (empty). On grid points this is the voxel's value exactly.
        """
        size = LEVEL_VOXEL_SIZES[level]
        scaled = np.asarray(points, dtype=np.float64) / size
        base = np.floor(scaled + 1e-9).astype(
            np.int64
        )  # a grid point computed a hair low is still that point
        frac = np.clip(scaled - base, 0.0, 1.0)
        tsdf_sum = np.zeros(len(scaled))
        weight_sum = np.zeros(len(scaled))
        for corner in np.ndindex(2, 2, 2):
            offset = np.asarray(corner)
            w = np.prod(np.where(offset, frac, 1.0 - frac), axis=1)
            tsdf, observed_weight = self.maps[level].get_voxels(base + offset)
            w = np.where(observed_weight > 0, w, 0.0)
            tsdf_sum += w * tsdf
            weight_sum += w
        observed = weight_sum > 1e-6
        values = np.where(observed, tsdf_sum / np.maximum(weight_sum, 1e-12), 1.0)
        return values.astype(np.float32), observed


def fragment_visibility(
    keyframes: Sequence[Frame],
    points: np.ndarray,
    truncation_m: float,
    max_depth_m: float = GT_MAX_DEPTH_M,
    min_depth_m: float = GT_MIN_DEPTH_M,
) -> np.ndarray:
    """Bool (N,): world ``points`` that a depth fusion of ``keyframes`` alone would update.

    Same test as :meth:`TSDFMap.integrate_depth`: the point projects (nearest pixel) onto a valid depth
    reading ``d`` and lies in front of the surface or at most ``truncation_m`` behind it.
    """
    seen = np.zeros(len(points), dtype=bool)
    for frame in keyframes:
        depth, K = depth_intrinsics(frame)
        T_camera_world = np.linalg.inv(frame.T_world_camera)
        p = points @ T_camera_world[:3, :3].T + T_camera_world[:3, 3]
        z = p[:, 2]
        front = z > 1e-6
        z_safe = np.where(front, z, 1.0)
        u = np.floor(p[:, 0] / z_safe * K.fx + K.cx + 0.5)
        v = np.floor(p[:, 1] / z_safe * K.fy + K.cy + 0.5)
        inside = front & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
        index = np.flatnonzero(inside)
        d = depth[v[index].astype(np.int64), u[index].astype(np.int64)]
        valid = (d >= min_depth_m) & (d <= max_depth_m)  # NaN compares False
        seen[index[valid & (d - z[index] >= -truncation_m)]] = True
    return seen


@dataclass
class FragmentTargets:
    """Dense targets of one fragment volume per level (coarse first), indexed ``[x, y, z]``."""

    tsdf: list[np.ndarray]  # (n, n, n) float32, n = 24, 48, 96; 1.0 = empty or unobserved
    occupancy: list[np.ndarray]  # (n, n, n) bool
    vol_origin_voxels: np.ndarray  # (3,) int64: world index (0.04 m) of the volume's voxel (0, 0, 0)

    def gather(self, level: int, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets at local finest-voxel ``coords`` (N, 3) of ``level`` (tensors on coords' device)."""
        index = (coords // level_interval(level)).long()
        tsdf = torch.as_tensor(self.tsdf[level], device=coords.device)
        occupancy = torch.as_tensor(self.occupancy[level], device=coords.device)
        return tsdf[index[:, 0], index[:, 1], index[:, 2]], occupancy[index[:, 0], index[:, 1], index[:, 2]]


def fragment_targets(
    scene: SceneTSDF,
    keyframes: Sequence[Frame],
    vol_origin_voxels: np.ndarray,
    T_scene_world: np.ndarray | None = None,
) -> FragmentTargets:
    """Per-level targets of the fragment volume at ``vol_origin_voxels`` (see the module doc).

    ``keyframes`` carry poses in the fragment's world; ``T_scene_world`` maps that world into the
    scene TSDF's world (identity unless the fragment was augmented).
    """
    origin = np.asarray(vol_origin_voxels, dtype=np.int64).reshape(3)
    tsdf_levels, occ_levels = [], []
    for level in range(N_LEVELS):
        n = level_dim(level)
        points = level_grid_points(origin, level)
        scene_points = (
            points if T_scene_world is None else points @ T_scene_world[:3, :3].T + T_scene_world[:3, 3]
        )
        tsdf, observed = scene.sample(level, scene_points)
        truncation = TRUNCATION_VOXELS * LEVEL_VOXEL_SIZES[level]
        seen = fragment_visibility(keyframes, points, truncation, scene.max_depth_m, scene.min_depth_m)
        occupancy = (np.abs(tsdf) < OCCUPIED_BELOW) & observed & seen
        tsdf_levels.append(tsdf.reshape(n, n, n))
        occ_levels.append(occupancy.reshape(n, n, n))
    return FragmentTargets(tsdf_levels, occ_levels, origin)


class GroundTruthRecorder(Reconstructor):
    """A reconstructor that builds training ground truth instead of a map.

    Fed by the ordinary pipeline (so keyframes and fragments follow the product's rules, and bags go
    through the node logic like a replay): every frame's depth is fused into the scene TSDF, every
    closed fragment is kept. It writes nothing into the pipeline's map.
    """

    name = "ground_truth"

    def __init__(self, scene: SceneTSDF | None = None) -> None:
        self.scene = scene if scene is not None else SceneTSDF()
        self.fragments: list[Fragment] = []

    def on_frame(self, frame: Frame, is_keyframe: bool) -> MapUpdate | None:
        self.scene.integrate(frame)
        return None

    def on_fragment(self, fragment: Fragment) -> MapUpdate | None:
        self.fragments.append(fragment)
        return None

    def reset(self) -> None:
        self.scene = SceneTSDF(self.scene.maps[0].device, self.scene.max_depth_m, self.scene.min_depth_m)
        self.fragments = []
