"""Smooth camera paths through synthetic scenes: hand-held walks and planar robot drives.

Both styles follow an ellipse inside the scene's furniture-free walkway, starting at a random phase
and direction. The path is first defined geometrically (as a function of the ellipse phase), then
re-timed so the camera never exceeds ``max_speed_mps`` nor the rotation-rate limit: the time spent on
each small step is the larger of distance / speed and angle / rate. Frames are sampled from that
timing at ``rate_hz``.

- ``handheld``: camera 1.2-1.6 m high, looking across the room (towards the far side, through the
  walkway centre; in small rooms the view turns more slowly than the walk so it stays within the
  rotation limit), slow look-around in yaw and pitch, plus walking bob, lateral sway and roll.
- ``robot``: a base on the floor driving forward along the ellipse (pure yaw), camera on a fixed
  :class:`CameraMount`; camera height = mount height.

Camera poses are ``T_world_camera`` in the optical frame (x right, y down, z forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import param
from ..geometry import make_transform
from .scene import Scene

STYLES = ("handheld", "robot")
# REP-103: an optical frame (x right, y down, z forward) expressed in a body frame (x forward, y left, z up).
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
T_BODY_OPTICAL = make_transform(R_BODY_OPTICAL, np.zeros(3))
_GRID_PER_LOOP = 20000


class TrajectoryError(ValueError):
    """A trajectory cannot be generated (bad arguments, or the path would leave the free space)."""


@dataclass
class TrajectoryConfig:
    max_speed_mps: float = param(
        0.35, "Maximum camera speed along the path.", minimum=0.01, maximum=5.0, unit="m/s"
    )
    max_rotation_deg_s: float = param(
        20.0, "Maximum rotation rate of the hand-held path before walking jitter.", minimum=1.0, unit="deg/s"
    )
    robot_max_rotation_deg_s: float = param(
        28.0, "Maximum yaw rate of the robot base.", minimum=1.0, unit="deg/s"
    )
    handheld_height_min_m: float = param(1.25, "Lowest mean height of the hand-held camera.", unit="m")
    handheld_height_max_m: float = param(1.55, "Highest mean height of the hand-held camera.", unit="m")
    handheld_pitch_deg: float = param(12.0, "Mean downward tilt of the hand-held camera.", unit="deg")
    look_around_deg: float = param(
        8.0, "Amplitude of the slow yaw/pitch look-around.", minimum=0.0, unit="deg"
    )
    step_frequency_hz: float = param(1.8, "Walking step frequency (bob; sway and roll at half).", minimum=0.1)
    bob_amplitude_m: float = param(0.012, "Vertical walking bob amplitude.", minimum=0.0, unit="m")
    sway_amplitude_m: float = param(0.01, "Lateral walking sway amplitude.", minimum=0.0, unit="m")
    roll_jitter_deg: float = param(0.8, "Walking roll amplitude.", minimum=0.0, unit="deg")
    pitch_jitter_deg: float = param(0.5, "Walking pitch amplitude.", minimum=0.0, unit="deg")
    walkway_margin_m: float = param(
        0.25, "Distance the path keeps inside the scene's furniture-free walkway.", minimum=0.0, unit="m"
    )
    min_clearance_m: float = param(
        0.2, "Every camera centre must be at least this far from any surface (checked).",
        minimum=0.0, unit="m",
    )
    mount_forward_m: float = param(0.10, "Camera mount: camera_link ahead of base_link.", unit="m")
    mount_height_m: float = param(0.50, "Camera mount: camera_link above base_link (robot camera height).",
                                  minimum=0.05, unit="m")
    mount_pitch_deg: float = param(5.0, "Camera mount: downward tilt of camera_link.", unit="deg")

    def mount(self) -> CameraMount:
        return CameraMount(self.mount_forward_m, 0.0, self.mount_height_m, self.mount_pitch_deg)

    def validate(self) -> None:
        """Raise :class:`TrajectoryError` naming the first bad field."""
        for name in ("max_speed_mps", "max_rotation_deg_s", "robot_max_rotation_deg_s", "step_frequency_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TrajectoryError(f"TrajectoryConfig.{name} must be a positive number, got {value}")
        low, high = self.handheld_height_min_m, self.handheld_height_max_m
        if not 0 < low <= high:
            raise TrajectoryError(
                "TrajectoryConfig.handheld_height_min_m / _max_m must satisfy 0 < min <= max, "
                f"got {low} / {high}"
            )


@dataclass(frozen=True)
class CameraMount:
    """Where the camera sits on a base: ``camera_link`` (x forward, y left, z up) in ``base_link``."""

    forward_m: float = 0.10
    lateral_m: float = 0.0
    height_m: float = 0.50
    pitch_deg: float = 5.0  # positive tilts the camera down

    def T_base_camera_link(self) -> np.ndarray:
        R = body_rotation(0.0, math.radians(self.pitch_deg), 0.0)
        return make_transform(R, np.array([self.forward_m, self.lateral_m, self.height_m]))

    def T_base_optical(self) -> np.ndarray:
        return self.T_base_camera_link() @ T_BODY_OPTICAL


def body_rotation(
    yaw: np.ndarray | float, pitch_down: np.ndarray | float, roll: np.ndarray | float
) -> np.ndarray:
    """World rotation(s) of a body frame (x forward, y left, z up): Rz(yaw) Ry(pitch_down) Rx(roll).

    Positive ``pitch_down`` tilts the x axis below the horizon. Scalars give (3, 3), arrays (N, 3, 3).
    """
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (yaw, pitch_down, roll)))
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    R = np.empty((*yaw.shape, 3, 3))
    R[..., 0, 0] = cy * cp
    R[..., 0, 1] = cy * sp * sr - sy * cr
    R[..., 0, 2] = cy * sp * cr + sy * sr
    R[..., 1, 0] = sy * cp
    R[..., 1, 1] = sy * sp * sr + cy * cr
    R[..., 1, 2] = sy * sp * cr - cy * sr
    R[..., 2, 0] = -sp
    R[..., 2, 1] = cp * sr
    R[..., 2, 2] = cp * cr
    return R


def generate_trajectory(
    scene: Scene,
    n_frames: int,
    seed: int,
    style: str = "handheld",
    rate_hz: float = 30.0,
    start_stamp: float = 1.7e9,
    config: TrajectoryConfig | None = None,
) -> list[tuple[float, np.ndarray]]:
    """``n_frames`` (stamp, T_world_camera) pairs at ``rate_hz`` from ``start_stamp``; deterministic."""
    config = config or TrajectoryConfig()
    config.validate()
    if style not in STYLES:
        raise TrajectoryError(f"unknown trajectory style {style!r}; expected one of {STYLES}")
    if n_frames < 1:
        raise TrajectoryError(f"n_frames must be >= 1, got {n_frames}")
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise TrajectoryError(f"rate_hz must be a positive number, got {rate_hz}")
    # A stream of its own, so a scene and its trajectory can share one seed without correlated draws.
    path = _Path(scene, config, style, np.random.default_rng([0x7A, seed]))
    times = np.arange(n_frames) / rate_hz
    poses = path.poses_at(times)
    clearance = scene.sdf(poses[:, :3, 3])
    worst = int(np.argmin(clearance))
    if clearance[worst] < config.min_clearance_m:
        raise TrajectoryError(
            f"frame {worst}: camera at {poses[worst, :3, 3].round(3).tolist()} is only "
            f"{clearance[worst]:.3f} m from a surface (min_clearance_m = {config.min_clearance_m}); "
            "increase walkway_margin_m"
        )
    return [(start_stamp + float(t), pose) for t, pose in zip(times, poses)]


class _Path:
    """The geometric path of one style, its re-timing, and frame sampling."""

    def __init__(self, scene: Scene, config: TrajectoryConfig, style: str, rng: np.random.Generator) -> None:
        self.config, self.style = config, style
        x0, y0, x1, y1 = scene.walkway
        self.centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        self.ax = (x1 - x0) / 2 - config.walkway_margin_m
        self.ay = (y1 - y0) / 2 - config.walkway_margin_m
        if min(self.ax, self.ay) < 0.1:
            raise TrajectoryError(
                f"the scene's walkway ({x1 - x0:.2f} x {y1 - y0:.2f} m) leaves no room for a path with "
                f"walkway_margin_m = {config.walkway_margin_m}"
            )
        self.phase0 = float(rng.uniform(0, 2 * math.pi))
        self.direction = float(rng.choice([-1.0, 1.0]))
        self.mount = config.mount()
        self.height = float(rng.uniform(config.handheld_height_min_m, config.handheld_height_max_m))
        self.phases = rng.uniform(0, 2 * math.pi, size=8)  # of the look-around and jitter sinusoids
        if style == "robot":
            self.max_rotation = math.radians(config.robot_max_rotation_deg_s)
            self.turn_ratio = 1.0
        else:
            self.max_rotation = math.radians(config.max_rotation_deg_s)
            # Turn the view slower than the walk when a full inward look would be rotation-limited.
            self.turn_ratio = min(1.0, 0.7 * self.max_rotation * min(self.ax, self.ay) / config.max_speed_mps)

    def _phase(self, s: np.ndarray) -> np.ndarray:
        return self.phase0 + self.direction * s

    def _ellipse_angle_offset(self, phi: np.ndarray) -> np.ndarray:
        """Polar angle of the ellipse point at parameter ``phi``, minus ``phi`` (small, periodic)."""
        angle = np.arctan2(self.ay * np.sin(phi), self.ax * np.cos(phi))
        return np.angle(np.exp(1j * (angle - phi)))

    def geometric_poses(self, s: np.ndarray, s_reference: float = 0.0) -> np.ndarray:
        """Camera poses (N, 4, 4) at path progress ``s`` (radians of ellipse phase), without jitter.

        A hand-held camera looks exactly inward at progress ``s_reference`` and turns ``turn_ratio``
        times as fast as the inward direction does; that constant offset does not change any rate.
        """
        phi = self._phase(s)
        xy = self.centre + np.stack([self.ax * np.cos(phi), self.ay * np.sin(phi)], -1)
        p = self.phases
        if self.style == "robot":
            tangent = np.stack([-self.ax * np.sin(phi), self.ay * np.cos(phi)], -1) * self.direction
            heading = np.arctan2(tangent[:, 1], tangent[:, 0])
            T_world_base = np.zeros((len(s), 4, 4))
            T_world_base[:, :3, :3] = body_rotation(heading, 0.0, 0.0)
            T_world_base[:, :2, 3] = xy
            T_world_base[:, 3, 3] = 1.0
            return T_world_base @ self.mount.T_base_optical()
        phi_ref = self._phase(np.array([s_reference]))
        inward_ref = math.pi + phi_ref[0] + self._ellipse_angle_offset(phi_ref)[0]
        yaw = inward_ref + self.turn_ratio * (
            (phi - phi_ref[0]) + self._ellipse_angle_offset(phi) - self._ellipse_angle_offset(phi_ref)[0]
        )
        look = math.radians(self.config.look_around_deg)
        yaw = yaw + look * np.sin(2 * s + p[0])
        pitch = math.radians(self.config.handheld_pitch_deg) + 0.5 * look * np.sin(1.5 * s + p[1])
        z = self.height + 0.03 * np.sin(s + p[2])
        poses = np.zeros((len(s), 4, 4))
        poses[:, :3, :3] = body_rotation(yaw, pitch, 0.0) @ R_BODY_OPTICAL
        poses[:, :2, 3] = xy
        poses[:, 2, 3] = z
        poses[:, 3, 3] = 1.0
        return poses

    def _timing(self, n_loops: int) -> tuple[np.ndarray, np.ndarray]:
        """(progress grid, time at each grid point) over ``n_loops`` loops, honouring both rate limits."""
        s = np.linspace(0.0, 2 * math.pi * n_loops, _GRID_PER_LOOP * n_loops + 1)
        poses = self.geometric_poses(s)
        step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=-1)
        # Rotation angle between neighbours from the Frobenius norm: ||R1 - R2|| = 2 sqrt(2) sin(angle / 2).
        chord = np.linalg.norm(np.diff(poses[:, :3, :3], axis=0), axis=(1, 2))
        angle = 2 * np.arcsin(np.clip(chord / (2 * math.sqrt(2)), 0.0, 1.0))
        dt = np.maximum(step / self.config.max_speed_mps, angle / self.max_rotation)
        return s, np.concatenate([[0.0], np.cumsum(dt)])

    def poses_at(self, times: np.ndarray) -> np.ndarray:
        duration = float(times[-1])
        _, loop_time = self._timing(1)
        n_loops = max(1, math.ceil(duration / loop_time[-1] * 1.05) + 1)
        s_grid, t_grid = self._timing(n_loops)
        # Centre the hand-held view drift (turn_ratio < 1) on the middle of the sequence.
        s_middle = float(np.interp(duration / 2, t_grid, s_grid))
        poses = self.geometric_poses(np.interp(times, t_grid, s_grid), s_middle)
        if self.style == "handheld":
            self._add_walking_jitter(poses, times)
        return poses

    def _add_walking_jitter(self, poses: np.ndarray, times: np.ndarray) -> None:
        """Bob (vertical), sway (sideways), roll and pitch at step rhythm, in place."""
        c, p = self.config, self.phases
        step = 2 * math.pi * c.step_frequency_hz * times
        bob = c.bob_amplitude_m * np.sin(step + p[3])
        sway = c.sway_amplitude_m * np.sin(0.5 * step + p[4])
        roll = math.radians(c.roll_jitter_deg) * np.sin(0.5 * step + p[5])
        pitch = math.radians(c.pitch_jitter_deg) * np.sin(step + p[6])
        # Optical x is the camera's right; sway moves along its horizontal projection.
        right = poses[:, :3, 0].copy()
        right[:, 2] = 0.0
        right /= np.maximum(np.linalg.norm(right, axis=-1, keepdims=True), 1e-9)
        poses[:, :3, 3] += sway[:, None] * right
        poses[:, 2, 3] += bob
        # Roll about the optical axis (z), pitch about the optical x axis, both in the camera frame.
        poses[:, :3, :3] = poses[:, :3, :3] @ _rotation_about(2, roll) @ _rotation_about(0, pitch)


def _rotation_about(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotations (N, 3, 3) by ``angle`` about coordinate axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    c, s = np.cos(angle), np.sin(angle)
    R = np.zeros((*angle.shape, 3, 3))
    R[..., axis, axis] = 1.0
    R[..., i, i], R[..., i, j] = c, -s
    R[..., j, i], R[..., j, j] = s, c
    return R
