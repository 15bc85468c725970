"""Per-fragment geometry: projection matrices, the gravity-aligned camera frame, volume placement.

Everything here reproduces upstream's float32 arithmetic (facts §1.4, §2.3 and the parity
fixture's "Fragile arithmetic" recipes), because the reset-gate quirk of the GRU fusion makes the
network sensitive to the last bit of the aligned-frame point coordinates:

* :func:`affine_f32` evaluates ``M[:, :3] @ X + M[:, 3]`` left to right with every product and sum
  rounded to float32 (no fused multiply-add, no blocked matmul);
* :func:`voxel_positions_f32` is ``fl(fl(c * fl(s)) + o)``;
* :func:`derive_fragment_geometry` follows upstream's data transforms (float32 inverses and
  matrix products, float64 only for the alignment rotation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: upstream constants (facts §1.4, §1.5, §4)
VOXEL_SIZE = 0.04
N_VOX = (96, 96, 96)
N_LEVELS = 3
FEATURE_STRIDE = 4  # stride of the finest backbone map
IMAGE_SIZE_WH = (640, 480)
FRUSTUM_MAX_DEPTH = 3.0
VOLUME_Z_CENTER = -0.2
PLACEMENT_MULTIPLE = 2**N_LEVELS  # volume origins are multiples of 8 finest voxels


class GeometryError(ValueError):
    """Fragment inputs (intrinsics, poses, sizes) cannot be turned into network geometry."""


@dataclass
class FragmentGeometry:
    """What the network needs to place and project one fragment (tensors on one device)."""

    proj_matrices: torch.Tensor  # (V, 3, 4, 4) float32, [view][scale], scale s at stride 4 * 2**s
    world_to_aligned_camera: torch.Tensor  # (4, 4) float32
    vol_origin_voxels: torch.Tensor  # (3,) int64, world voxel index of local voxel (0, 0, 0) at 0.04 m
    vol_origin_partial: torch.Tensor  # (3,) float32 metres, = fl(vol_origin_voxels * fl(0.04))

    def to(self, device: torch.device | str) -> FragmentGeometry:
        return FragmentGeometry(
            self.proj_matrices.to(device),
            self.world_to_aligned_camera.to(device),
            self.vol_origin_voxels.to(device),
            self.vol_origin_partial.to(device),
        )


def affine_f32(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Rows of ``M[..., :3] @ X.T + M[..., 3]`` with upstream's float32 rounding order.

    ``M`` (..., R, 4) float32, ``X`` (N, 3) float32 -> (..., N, R): component r of point n is
    ``fl(fl(fl(fl(x*m0) + fl(y*m1)) + fl(z*m2)) + m3)``.
    """
    cols = M.unsqueeze(-3)  # (..., 1, R, 4)
    x, y, z = X[:, 0:1], X[:, 1:2], X[:, 2:3]
    out = x * cols[..., 0]
    out = out + y * cols[..., 1]
    out = out + z * cols[..., 2]
    return out + cols[..., 3]


def voxel_positions_f32(coords: torch.Tensor, voxel_size: float, origin: torch.Tensor) -> torch.Tensor:
    """World positions ``fl(fl(c * fl(voxel_size)) + origin)`` of integer voxel ``coords`` (N, 3)."""
    scale = torch.tensor(voxel_size, dtype=torch.float32, device=coords.device)
    return coords.to(torch.float32) * scale + origin.to(torch.float32)


def _as_f32(array: np.ndarray | torch.Tensor, shape_tail: tuple[int, ...], what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(array, dtype=np.float32) if not torch.is_tensor(array) else array)
    t = t.detach().to("cpu", torch.float32)
    if t.shape[-len(shape_tail):] != shape_tail:
        raise GeometryError(f"{what} must have shape (..., {', '.join(map(str, shape_tail))}), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise GeometryError(f"{what} contains NaN or infinite values")
    return t


def projection_matrices(intrinsics: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """``P[v, s] = [[K_v / 4 / 2**s, K[2,2]=1] @ inv(T_world_cam_v)[:3]; 0 0 0 1]`` (V, 3, 4, 4) float32."""
    world_to_cam = torch.linalg.inv(cam_to_world)
    out = []
    for s in range(N_LEVELS):
        K = intrinsics / FEATURE_STRIDE / 2**s
        K[:, 2, 2] = 1.0
        P = world_to_cam.clone()
        P[:, :3, :4] = K @ world_to_cam[:, :3, :4]
        out.append(P)
    return torch.stack(out, dim=1)


def _axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix (float64) of a rotation by ``angle`` about the unit vector ``axis``, via its quaternion."""
    half = angle / 2.0
    w = np.cos(half)
    x, y, z = axis * np.sin(half)
    return np.array(
        [
            [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
            [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
            [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
        ]
    )


def gravity_alignment_rotation(cam_to_world: torch.Tensor) -> np.ndarray:
    """Rotation (float64 3x3) turning world +z, seen from the camera, onto the camera's -y axis.

    Upstream takes world up in camera coordinates from a float32 numpy (LAPACK gesv) inverse of the
    pose, then rotates
    about ``up_cam x (0, -1, 0)`` by ``arccos(-up_cam_y / |up_cam|)``. Upstream yields NaN for a camera
    whose -y axis already points exactly up (identity here) and an upside-down one (a half turn about x).
    """
    # numpy's float32 inverse, not torch's: its last bits differ and they reach the aligned frame
    up_cam = np.linalg.inv(cam_to_world.numpy())[:3, 2].astype(np.float64)
    down = np.array([0.0, -1.0, 0.0])
    axis = np.cross(up_cam, down)
    axis_norm = np.linalg.norm(axis)
    angle = float(np.arccos(np.clip(-up_cam[1] / np.linalg.norm(up_cam), -1.0, 1.0)))
    if axis_norm == 0.0:
        return np.eye(3) if up_cam[1] < 0 else _axis_angle_matrix(np.array([1.0, 0.0, 0.0]), np.pi)
    return _axis_angle_matrix(axis / axis_norm, angle)


def world_to_aligned_camera(cam_to_world_middle: torch.Tensor) -> torch.Tensor:
    """``R_align @ inv(T_world_cam_middle)`` (4x4 float32): the middle camera's gravity-aligned frame."""
    R = torch.eye(4, dtype=torch.float64)
    R[:3, :3] = torch.from_numpy(gravity_alignment_rotation(cam_to_world_middle))
    return R.float() @ torch.linalg.inv(cam_to_world_middle)


def frustum_points(intrinsics: torch.Tensor, cam_to_world: torch.Tensor, image_wh: tuple[int, int],
                   max_depth: float = FRUSTUM_MAX_DEPTH) -> torch.Tensor:
    """World positions (V, 3, 5) of the camera centres and the 4 image corners at ``max_depth``."""
    w, h = image_wh
    depth = torch.tensor([0.0, max_depth, max_depth, max_depth, max_depth])
    u = torch.tensor([0, 0, 0, w, w])
    v = torch.tensor([0, 0, h, 0, h])
    K = intrinsics
    x = (u - K[:, 0, 2:3]) * depth / K[:, 0, 0:1]
    y = (v - K[:, 1, 2:3]) * depth / K[:, 1, 1:2]
    z = depth.expand_as(x)
    pts = torch.stack([x, y, z, torch.ones_like(x)], dim=1)  # (V, 4, 5)
    return (cam_to_world @ pts)[:, :3]


def place_fragment_volume(intrinsics: torch.Tensor, cam_to_world: torch.Tensor, image_wh: tuple[int, int],
                          n_vox: Sequence[int] = N_VOX, voxel_size: float = VOXEL_SIZE) -> torch.Tensor:
    """World voxel index (int64 (3,)) of the fragment volume's voxel (0, 0, 0) (facts §1.4).

    XY: centre of the views' frustum hull rounded (half to even) to a multiple of 8 voxels, minus
    half the volume; Z: fixed centre -0.2 m floored to a multiple of 8 voxels (origin z = -0.32 m).
    """
    pts = frustum_points(intrinsics, cam_to_world, image_wh)
    lo = pts.amin(dim=(0, 2))
    hi = pts.amax(dim=(0, 2))
    centre = torch.stack([(hi[0] + lo[0]) / 2, (hi[1] + lo[1]) / 2, torch.tensor(VOLUME_Z_CENTER)]) / voxel_size
    m = PLACEMENT_MULTIPLE
    centre_xy = torch.round(centre[:2] / m) * m
    centre_z = torch.floor(centre[2:] / m) * m
    half = torch.tensor([n // 2 for n in n_vox[:2]], dtype=torch.float32)
    origin = torch.cat([centre_xy - half, centre_z])
    return origin.to(torch.int64)


def origin_metres(vol_origin_voxels: torch.Tensor, voxel_size: float = VOXEL_SIZE) -> torch.Tensor:
    """``vol_origin_partial`` as upstream computes it: ``fl(origin_voxels * fl(voxel_size))``."""
    return vol_origin_voxels.to(torch.float32) * torch.tensor(voxel_size, dtype=torch.float32)


def derive_fragment_geometry(intrinsics: np.ndarray | torch.Tensor, cam_to_world: np.ndarray | torch.Tensor,
                             image_wh: tuple[int, int] = IMAGE_SIZE_WH) -> FragmentGeometry:
    """Upstream's per-fragment matrices from pixel intrinsics (V, 3, 3) of ``image_wh`` images and
    camera-to-world poses (V, 4, 4) in the network world (z up, floor near 0). Computed on the CPU."""
    K = _as_f32(intrinsics, (3, 3), "intrinsics")
    T = _as_f32(cam_to_world, (4, 4), "cam_to_world")
    if K.ndim != 3 or T.ndim != 3 or K.shape[0] != T.shape[0] or K.shape[0] == 0:
        raise GeometryError(
            f"expected V intrinsics (V, 3, 3) and V poses (V, 4, 4), got {tuple(K.shape)} and {tuple(T.shape)}"
        )
    if (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        raise GeometryError("intrinsics have a non-positive focal length")
    origin = place_fragment_volume(K, T, image_wh)
    return FragmentGeometry(
        proj_matrices=projection_matrices(K, T),
        world_to_aligned_camera=world_to_aligned_camera(T[K.shape[0] // 2]),
        vol_origin_voxels=origin,
        vol_origin_partial=origin_metres(origin),
    )
