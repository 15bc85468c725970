"""Rigid-transform helpers (float64, numpy). Transforms are named ``T_to_from``."""

from __future__ import annotations

import numpy as np


class PoseError(ValueError):
    """A pose is not a finite rigid transform."""


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = translation
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (exact transpose of the rotation, no general inverse)."""
    R, t = T[:3, :3], T[:3, 3]
    return make_transform(R.T, -R.T @ t)


def check_rigid(T: np.ndarray, what: str = "pose", tolerance: float = 1e-3) -> np.ndarray:
    """Return ``T`` as float64 4x4 or raise :class:`PoseError` saying what is wrong with it."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise PoseError(f"{what} must be 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise PoseError(f"{what} contains NaN or infinite values")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tolerance):
        raise PoseError(f"{what} has a bottom row {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    error = np.abs(R.T @ R - np.eye(3)).max()
    if error > tolerance or np.linalg.det(R) < 0:
        raise PoseError(f"{what} rotation is not orthonormal (max |R^T R - I| = {error:.3g})")
    return T


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """Rotation matrix of a quaternion given in ROS order (x, y, z, w); normalises it first."""
    q = np.array([w, x, y, z], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise PoseError(f"quaternion ({x}, {y}, {z}, {w}) is not finite")
    largest = np.abs(q).max()
    if largest < 1e-9:
        raise PoseError(f"quaternion ({x}, {y}, {z}, {w}) has (nearly) zero length")
    norm = np.linalg.norm(q)
    if not np.isfinite(norm):  # squaring 1e200 overflows: scale first (only then, to keep the usual rounding)
        q = q / largest
        norm = np.linalg.norm(q)
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """Quaternion (x, y, z, w) of a rotation matrix, with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        w, x, y, z = 0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        v = np.zeros(3)
        v[i] = 0.25 * s
        v[j] = (R[j, i] + R[i, j]) / s
        v[k] = (R[k, i] + R[i, k]) / s
        w = (R[k, j] - R[j, k]) / s
        x, y, z = v
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def slerp_quaternion(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x, y, z, w), shortest path."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    return (np.sin((1 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)


def interpolate_transform(T0: np.ndarray, T1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose at fraction ``alpha`` between T0 (0) and T1 (1): linear translation, slerp rotation."""
    q = slerp_quaternion(
        np.array(matrix_to_quaternion(T0[:3, :3])), np.array(matrix_to_quaternion(T1[:3, :3])), alpha
    )
    t = (1 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return make_transform(quaternion_to_matrix(*q), t)


def viewing_angle_rad(T_world_a: np.ndarray, T_world_b: np.ndarray) -> float:
    """Angle between the optical (z) axes of two camera poses; roll about the axis is ignored."""
    za, zb = T_world_a[:3, 2], T_world_b[:3, 2]
    return float(np.arccos(np.clip(np.dot(za, zb) / (np.linalg.norm(za) * np.linalg.norm(zb)), -1, 1)))


def rotation_about_axis(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * K + (1 - np.cos(angle_rad)) * K @ K


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """``T_world_camera`` of an optical-frame camera at ``eye`` looking at ``target`` (y down, world +z up)."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64)
    z = np.asarray(target, np.float64) - np.asarray(eye, np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise PoseError("look_at: viewing direction is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_transform(np.stack([x, y, z], axis=1), eye)
