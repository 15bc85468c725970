"""Planner products of the TSDF map: near-surface voxel cloud, 2D occupancy grid (Nav2), 2D ESDF slice.

Frames and geometry:

- The map stores voxel ``v`` at map-frame position ``v * voxel_size`` (see :mod:`.tsdf_map`). The TSDF
  cloud stays in the map frame.
- The occupancy grid and the ESDF slice live in the *global* frame (z up), ``T_global_map`` places the
  map in it. Supported: any translation plus a rotation about z (what a floor-height offset or a yawed
  map produces); a tilted map raises :class:`ProductError`, since its voxel columns are not vertical.
- Grid cells are ``voxel_size`` squares axis-aligned with global x/y. Their centres sit on the map's
  voxel lattice when the map's yaw is a multiple of 90 degrees, so each cell is exactly one voxel
  column. For other yaws each voxel column is resampled as 2 x 2 sub-points (spacing voxel/2, which
  leaves no hole in the interior of the map); a cell is occupied if any occupied sub-point falls in it,
  so obstacles grow by up to ~half a voxel rather than thin out.
- The grid spans the bounding box of *all* observed voxels (every height), so the occupancy grid and
  the ESDF slice share one geometry whatever the height band; ``origin_xy`` is the outer corner of
  cell (0, 0) (Nav2's ``info.origin``), cell ``(ix, iy)`` is ``data[iy, ix]``.

Occupancy of a cell (heights = global z of the voxel sample points, band inclusive): occupied (100) if
any observed voxel in ``[min_height_m, max_height_m]`` has ``sdf < voxel_size / 2`` (inside or on a
surface), free (0) if the band holds observed voxels and none is occupied, unknown (-1) if it holds no
observed voxel. A voxel is observed when its fusion weight is above ``min_weight`` (default 0).

ESDF slice: the 2D Euclidean distance (metres, between cell centres) from every non-occupied cell to
the nearest occupied cell of the occupancy grid, capped at ``max_distance_m``. Occupied cells hold the
surface (within half a cell), so unsigned they are 0; signed (default) they are ``-(d - resolution)``
with ``d`` the distance to the nearest non-occupied (free or unknown) cell: 0 on an obstacle's rim,
negative deeper inside, capped at ``-max_distance_m``. Either way a value is within about half a cell
(a bit more near corners) of the 2D signed distance from the cell centre to the band's obstacles.
Distances are computed for unknown cells too (unknown counts as not occupied) and flagged by
``known == False``. The slice is drawn at the global height ``esdf_slice_height_m``; the obstacles it
measures are the occupancy band's.

Computation runs with torch on the map's device (CPU or CUDA); results are numpy on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage

from ..config import param
from ..geometry import PoseError, check_rigid

FREE = 0
OCCUPIED = 100
UNKNOWN = -1

#: slack (metres) on both ends of the height band, so voxels exactly on a band edge are inside
HEIGHT_EPSILON_M = 1e-6
#: largest tilt (radians) of the map's z axis against global z that still counts as "rotation about z"
MAX_TILT_RAD = 1e-3
#: most cells of a 2D grid (and of the map's column footprint): 64 M, e.g. 320 m square at 4 cm voxels
MAX_GRID_CELLS = 1 << 26
#: a planar rotation closer than this (per matrix entry) to a signed permutation keeps the voxel lattice
_LATTICE_TOLERANCE = 1e-6


class ProductError(ValueError):
    """A planner product cannot be computed: bad band, distance, transform or map output."""


@dataclass
class ProductsConfig:
    """Planner products: TSDF voxel cloud, 2D occupancy grid, 2D ESDF slice (what, and how often)."""

    tsdf_cloud_max_abs_tsdf: float = param(
        0.5, "TSDF voxel cloud: keep observed voxels with |tsdf| (sdf / truncation) at most this "
        "(1 = the whole truncation band, 0.5 = within half of it).", minimum=0.0, maximum=1.0)
    tsdf_cloud_min_weight: float = param(
        0.0, "TSDF voxel cloud: keep voxels whose fusion weight is above this.", minimum=0.0)
    tsdf_cloud_publish_rate_hz: float = param(
        0.5, "Rate of the TSDF voxel cloud (sensor_msgs/PointCloud2, map frame); 0 disables it.",
        minimum=0.0, maximum=100.0, unit="Hz")
    occupancy_min_height_m: float = param(
        0.1, "Lowest global-frame height (z) of obstacles projected into the 2D occupancy grid; keep it "
        "above the floor.", minimum=-100.0, maximum=100.0, unit="m")
    occupancy_max_height_m: float = param(
        1.5, "Highest global-frame height (z) of obstacles projected into the 2D occupancy grid (the "
        "robot's height). Must be >= occupancy_min_height_m.", minimum=-100.0, maximum=100.0, unit="m")
    occupancy_min_weight: float = param(
        0.0, "Occupancy grid and ESDF: voxels whose fusion weight is above this count as observed.",
        minimum=0.0)
    occupancy_publish_rate_hz: float = param(
        1.0, "Rate of the 2D occupancy grid (nav_msgs/OccupancyGrid, global frame); 0 disables it.",
        minimum=0.0, maximum=100.0, unit="Hz")
    esdf_slice_height_m: float = param(
        0.5, "Global-frame height (z) at which the 2D ESDF slice is drawn. Its obstacles are the "
        "occupancy grid's (occupancy_min_height_m .. occupancy_max_height_m).",
        minimum=-100.0, maximum=100.0, unit="m")
    esdf_max_distance_m: float = param(
        2.0, "2D ESDF distances are capped at this.", minimum=0.01, maximum=100.0, unit="m")
    esdf_signed: bool = param(
        True, "2D ESDF: negative inside obstacles (0 on their rim, minus the depth inside); false: 0 "
        "everywhere inside obstacles.")
    esdf_publish_rate_hz: float = param(
        1.0, "Rate of the 2D ESDF slice (sensor_msgs/PointCloud2 x, y, z, distance; global frame); "
        "0 disables it.", minimum=0.0, maximum=100.0, unit="Hz")


class VoxelSource(Protocol):
    """What the products need from a map (:class:`.tsdf_map.TSDFMap` provides it)."""

    voxel_size: float
    truncation_m: float

    def voxels(
        self, min_weight: float = 0.0, as_tensor: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


# --------------------------------------------------------------------------------------------
# result types


@dataclass
class TSDFCloud:
    """Near-surface voxels: ``points`` float32 (N, 3) (map frame unless moved), ``tsdf``, ``weight`` (N,)."""

    points: np.ndarray
    tsdf: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class GridGeometry:
    """A 2D grid axis-aligned with the global frame's x/y: ``width`` cells along x, ``height`` along y.

    ``origin_xy`` is the global position of the outer corner of cell (0, 0); cell ``(ix, iy)`` has its
    centre at ``origin_xy + (ix + 0.5, iy + 0.5) * resolution``.
    """

    resolution: float
    origin_xy: tuple[float, float]
    width: int
    height: int

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) float64 (height, width) global coordinates of every cell centre."""
        xs = self.origin_xy[0] + (np.arange(self.width) + 0.5) * self.resolution
        ys = self.origin_xy[1] + (np.arange(self.height) + 0.5) * self.resolution
        x, y = np.meshgrid(xs, ys, indexing="xy")
        return x, y

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """int64 (N, 2) cell indices (ix, iy) of global points (N, 2); may lie outside the grid."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.floor((xy - np.asarray(self.origin_xy)) / self.resolution).astype(np.int64)


class _OnGridGeometry:
    """Shortcuts to the grid geometry of a 2D product."""

    geometry: GridGeometry

    @property
    def resolution(self) -> float:
        return self.geometry.resolution

    @property
    def origin_xy(self) -> tuple[float, float]:
        return self.geometry.origin_xy

    @property
    def width(self) -> int:
        return self.geometry.width

    @property
    def height(self) -> int:
        return self.geometry.height


@dataclass
class OccupancyGrid2D(_OnGridGeometry):
    """2D occupancy: ``data`` int8 (height, width), ``data[iy, ix]`` in {UNKNOWN -1, FREE 0, OCCUPIED 100}."""

    geometry: GridGeometry
    data: np.ndarray

    @property
    def is_empty(self) -> bool:
        return self.data.size == 0


@dataclass
class ESDFSlice(_OnGridGeometry):
    """2D distance field on an occupancy grid's geometry, drawn at global height ``z_m``.

    ``distance`` float32 (height, width) metres, finite everywhere (see the module doc for signs and
    capping); ``known`` bool (height, width) is False where the occupancy grid is unknown.
    """

    geometry: GridGeometry
    distance: np.ndarray
    known: np.ndarray
    z_m: float

    def masked_distance(self) -> np.ndarray:
        """``distance`` with NaN at unknown cells (e.g. for a 32FC1 image; row iy, column ix)."""
        return np.where(self.known, self.distance, np.float32(np.nan)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# products


@torch.no_grad()
def tsdf_voxel_cloud(
    tsdf_map: VoxelSource,
    max_abs_tsdf: float = 0.5,
    min_weight: float = 0.0,
    T_frame_map: np.ndarray | None = None,
) -> TSDFCloud:
    """Observed voxels (weight > ``min_weight``) with ``|tsdf| <= max_abs_tsdf``.

    Points are the voxels' map-frame positions ``index * voxel_size``, or, given ``T_frame_map`` (any
    rigid transform), those positions expressed in that frame.
    """
    if not 0.0 <= max_abs_tsdf <= 1.0:
        raise ProductError(f"max_abs_tsdf must be in [0, 1] (normalised TSDF), got {max_abs_tsdf!r}")
    coords, tsdf, weight = _observed_voxels(tsdf_map, min_weight)
    keep = tsdf.abs() <= max_abs_tsdf
    points = coords[keep].to(torch.float64) * float(tsdf_map.voxel_size)
    if T_frame_map is not None:
        T = _rigid(T_frame_map, "T_frame_map")
        R = torch.as_tensor(T[:3, :3], dtype=torch.float64, device=points.device)
        points = points @ R.T + torch.as_tensor(T[:3, 3], dtype=torch.float64, device=points.device)
    return TSDFCloud(
        points.to(torch.float32).cpu().numpy(), tsdf[keep].cpu().numpy(), weight[keep].cpu().numpy()
    )


@torch.no_grad()
def occupancy_grid(
    tsdf_map: VoxelSource,
    min_height_m: float,
    max_height_m: float,
    T_global_map: np.ndarray | None = None,
    min_weight: float = 0.0,
) -> OccupancyGrid2D:
    """Project the global-height band ``[min_height_m, max_height_m]`` of the map into a 2D grid.

    See the module doc for the cell rule and the grid's geometry. A map without observed voxels gives
    an empty (0 x 0) grid.
    """
    if not (math.isfinite(min_height_m) and math.isfinite(max_height_m) and min_height_m <= max_height_m):
        raise ProductError(
            f"occupancy height band needs finite min_height_m <= max_height_m, got {min_height_m!r} "
            f"and {max_height_m!r}"
        )
    T = _planar_transform(T_global_map)
    vs = float(tsdf_map.voxel_size)
    coords, tsdf, _ = _observed_voxels(tsdf_map, min_weight)
    device = coords.device
    origin = T[:2, 3]
    if len(coords) == 0:
        return OccupancyGrid2D(GridGeometry(vs, (float(origin[0]), float(origin[1])), 0, 0),
                               np.zeros((0, 0), np.int8))

    R = torch.as_tensor(T[:3, :3], dtype=torch.float64, device=device)
    z_global = (coords.to(torch.float64) * vs) @ R[2] + float(T[2, 3])
    in_band = (z_global >= min_height_m - HEIGHT_EPSILON_M) & (z_global <= max_height_m + HEIGHT_EPSILON_M)
    occupied = in_band & (tsdf * float(tsdf_map.truncation_m) < 0.5 * vs)
    # UNKNOWN < FREE < OCCUPIED, so a column's / cell's state is the max over what falls into it
    # (int32: scatter max is a native atomic on CUDA)
    voxel_state = torch.where(occupied, OCCUPIED, torch.where(in_band, FREE, UNKNOWN)).to(torch.int32)
    columns, column_state = _column_states(coords[:, :2], voxel_state)

    # cell lattice anchored at the map origin, axes = global x/y: cell k has its centre at origin + k * vs
    offsets = torch.as_tensor(_footprint_offsets(T[:2, :2], vs), device=device)
    planar = (columns.to(torch.float64) * vs) @ R[:2, :2].T  # global xy relative to the map origin
    cells = torch.floor((planar[None] + offsets[:, None]) / vs + 0.5).to(torch.int64)  # (S, K, 2)
    low = cells.reshape(-1, 2).min(dim=0).values
    width, height = (int(v) for v in (cells.reshape(-1, 2).max(dim=0).values - low + 1).tolist())
    _check_grid_size(width, height)
    flat = ((cells[..., 1] - low[1]) * width + (cells[..., 0] - low[0])).reshape(-1)
    data = torch.full((height * width,), UNKNOWN, dtype=torch.int32, device=device)
    data.scatter_reduce_(0, flat, column_state.repeat(len(offsets)), reduce="amax")

    origin_xy = origin + (low.cpu().numpy().astype(np.float64) - 0.5) * vs
    geometry = GridGeometry(vs, (float(origin_xy[0]), float(origin_xy[1])), width, height)
    return OccupancyGrid2D(geometry, data.to(torch.int8).reshape(height, width).cpu().numpy())


def esdf_slice(
    grid: OccupancyGrid2D, max_distance_m: float, z_m: float = 0.0, signed: bool = True
) -> ESDFSlice:
    """2D Euclidean distance field of ``grid`` (see the module doc), drawn at global height ``z_m``."""
    if not (math.isfinite(max_distance_m) and max_distance_m > 0):
        raise ProductError(f"esdf max_distance_m must be a positive number, got {max_distance_m!r}")
    data = np.asarray(grid.data)
    if data.shape != (grid.height, grid.width):
        raise ProductError(f"occupancy data has shape {data.shape}, the grid is {grid.height} x {grid.width}")
    occupied = data == OCCUPIED
    known = data != UNKNOWN
    cap = float(max_distance_m)
    outside = _distance_to(occupied, grid.resolution, cap)
    if signed:
        # the surface lies inside the outermost occupied cells: they get 0, one cell deeper -resolution
        inside = _distance_to(~occupied, grid.resolution, cap + grid.resolution) - grid.resolution
        distance = np.where(occupied, -inside, outside)
    else:
        distance = outside
    distance = np.clip(distance, -cap, cap).astype(np.float32)
    return ESDFSlice(grid.geometry, distance, known, float(z_m))


# --------------------------------------------------------------------------------------------
# helpers


def _observed_voxels(
    tsdf_map: VoxelSource, min_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coords int64 (N, 3), tsdf float32 (N,), weight float32 (N,)) of voxels with weight > min_weight."""
    if not (math.isfinite(min_weight) and min_weight >= 0):
        raise ProductError(f"min_weight must be a number >= 0, got {min_weight!r}")
    voxels = tsdf_map.voxels(min_weight=min_weight, as_tensor=True)
    coords, tsdf, weight = (torch.as_tensor(a) for a in voxels)
    n = len(coords)
    if coords.shape != (n, 3) or tsdf.shape != (n,) or weight.shape != (n,):
        raise ProductError(
            f"map voxels() returned shapes {tuple(coords.shape)}, {tuple(tsdf.shape)}, "
            f"{tuple(weight.shape)}; expected (N, 3), (N,), (N,)"
        )
    return coords.to(torch.int64), tsdf.to(torch.float32), weight.to(torch.float32)


def _column_states(xy: torch.Tensor, voxel_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse voxels into map-frame columns: (column xy int64 (K, 2), state (K,) = max voxel state).

    Only columns holding at least one voxel are returned (those decide the grid's extent).
    """
    low = xy.min(dim=0).values
    size_x, size_y = (int(v) for v in (xy.max(dim=0).values - low + 1).tolist())
    _check_grid_size(size_x, size_y)
    flat = (xy[:, 1] - low[1]) * size_x + (xy[:, 0] - low[0])
    no_voxel = UNKNOWN - 1
    state = torch.full((size_x * size_y,), no_voxel, dtype=voxel_state.dtype, device=xy.device)
    state.scatter_reduce_(0, flat, voxel_state, reduce="amax")
    present = (state > no_voxel).nonzero().squeeze(1)
    columns = torch.stack([present % size_x, present // size_x], dim=1) + low
    return columns, state[present]


def _check_grid_size(width: int, height: int) -> None:
    if width * height > MAX_GRID_CELLS:
        raise ProductError(
            f"the map's observed voxels span {width} x {height} cells, more than {MAX_GRID_CELLS} for a 2D "
            "grid (stray voxels far away? check poses and depth limits)"
        )


def _rigid(T: np.ndarray, what: str) -> np.ndarray:
    try:
        return check_rigid(T, what)
    except PoseError as exc:
        raise ProductError(str(exc)) from exc


def _planar_transform(T_global_map: np.ndarray | None) -> np.ndarray:
    """``T_global_map`` as float64 4x4 after checking it is rigid and rotates about z only."""
    if T_global_map is None:
        return np.eye(4)
    T = _rigid(T_global_map, "T_global_map")
    tilt = math.asin(min(1.0, math.hypot(T[2, 0], T[2, 1])))
    if tilt > MAX_TILT_RAD or T[2, 2] < 0:
        degrees = math.degrees(math.acos(max(-1.0, min(1.0, T[2, 2]))))
        raise ProductError(
            f"T_global_map tilts the map's z axis by {degrees:.3f} deg; 2D occupancy needs a z-up global "
            f"frame and a map rotated about z only (at most {math.degrees(MAX_TILT_RAD):.3f} deg of tilt)"
        )
    return T


def _footprint_offsets(R_xy: np.ndarray, voxel_size: float) -> np.ndarray:
    """(S, 2) global-frame offsets of the sub-points that stand for one voxel column's footprint.

    One point (the voxel itself) when the planar rotation maps the voxel lattice onto the cell lattice
    (a signed permutation: yaw a multiple of 90 degrees); otherwise a 2 x 2 pattern at +-voxel/4 along
    the map's axes. Their lattice (spacing voxel/2) leaves no point farther than voxel/(2 sqrt 2) from
    its nearest sub-point, less than a cell's inradius voxel/2, so every covered cell gets one.
    """
    if np.abs(R_xy - np.round(R_xy)).max() < _LATTICE_TOLERANCE:
        return np.zeros((1, 2))
    quarter = 0.25 * voxel_size
    local = np.array([[-quarter, -quarter], [-quarter, quarter], [quarter, -quarter], [quarter, quarter]])
    return local @ R_xy.T


def _distance_to(targets: np.ndarray, resolution: float, cap: float) -> np.ndarray:
    """float64 distance (m) from every cell to the nearest ``True`` cell of ``targets``; ``cap`` if none."""
    if not targets.any():
        return np.full(targets.shape, cap)
    return ndimage.distance_transform_edt(~targets, sampling=resolution)
